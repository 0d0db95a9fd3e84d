"""The Dockerfile rendering of an image plan: the build context (Dockerfile, normalised env
files, tooling wheel, uv; for conda strategies the conda packages installed)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_steps import __version__
from mlflow_steps.build.image_plan import (
    CONDA_STRATEGIES,
    ImagePlan,
    write_tooling_wheel,
)
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.hashing import SOURCE_DATE_EPOCH, TEMPLATES_DIR
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.env.pip_secrets import NO_MOUNTS, UV_CONFIG_TARGET, PipConfigDelivery
from mlflow_steps.image.layers import layer_mode

if TYPE_CHECKING:
    import jinja2

SBOM_TOOL = "cyclonedx-bom==7.5.0"  # run from the build cache, never in a layer
# Reproducible output; no schema validation of the generator's own output (it takes 5-12 s
# per environment, and the output is the same)
SBOM_ARGS = ("environment", "--no-validate", "--output-reproducible", "--of", "JSON")
INSTALL_LAYER = "install-layer.sh.j2"
TEMPLATES = {"pip": "pip.Dockerfile.j2", "conda": "conda.Dockerfile.j2",
             "conda-lock": "conda-lock.Dockerfile.j2"}


def _environment() -> jinja2.Environment:
    import jinja2  # only when rendering: not on the builder's skip path

    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES_DIR),
        undefined=jinja2.StrictUndefined,
        keep_trailing_newline=True,
        autoescape=False,
    )


def render_dockerfile(plan: ImagePlan,
                      delivery: PipConfigDelivery = NO_MOUNTS) -> str:
    """The Dockerfile text of ``plan``."""
    install = plan.install
    template = _environment().get_template(TEMPLATES[install.strategy])
    return template.render(
        tooling_version=__version__,
        tag=plan.tag,
        source_date_epoch=SOURCE_DATE_EPOCH,
        lock_path=plan.record.lock,
        sbom_path=plan.record.sbom,
        pylock_path=plan.record.pylock,
        sbom_tool=SBOM_TOOL,
        sbom_args=" ".join(SBOM_ARGS),
        strategy=install.strategy,
        source=install.source,
        base_image=plan.base_image,
        build_dir=plan.record.directory,  # where RUN steps mount the env files and tooling
        env_prefix=plan.env_prefix,
        tooling_prefix=plan.tooling_prefix,
        tooling_python="python3",
        workdir=plan.user.workdir,
        uid=plan.user.uid,
        pip_prefix=delivery.prefix(),
        uv_config=UV_CONFIG_TARGET,
        tooling_wheel=plan.tooling_wheel,
        layers=layer_selectors(install.own_layers),
        locked=install.locked,
        has_added=bool(install.added_requirements),
        has_build_requirements=bool(install.build_requirements),
        has_locked_pip=bool(install.locked_pip),
        build_env=plan.build_env,
        runtime_env=plan.runtime_env,
        labels=plan.labels,
        command=json.dumps(list(plan.command)),
    )


def layer_selectors(own_layers: tuple[tuple[str, ...], ...]) -> list[dict[str, str]]:
    """Per package group, the extended regular expressions (``grep -E -i``) of the names it
    picks from the resolved pins, and of those an earlier group took (a name goes to the
    first group that matches it, as in the direct builder)."""
    patterns = ["|".join(_name_regex(pattern) for pattern in group) for group in own_layers]
    return [{"pick": pick, "earlier": "|".join(patterns[:index])}
            for index, pick in enumerate(patterns)]


def _name_regex(pattern: str) -> str:
    """A glob over normalised distribution names as a regular expression over pinned names
    (``-``, ``_`` and ``.`` alike, as the normalisation makes them)."""
    return "".join("[^=]*" if char == "*" else "[-_.]" if char in "-_." else re.escape(char)
                   for char in pattern)


def write_context(plan: ImagePlan, out_dir: Path,
                  delivery: PipConfigDelivery = NO_MOUNTS,
                  conda_channel_alias: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Path:
    """Write Dockerfile, env/, tooling/ (the tooling wheel), tools/ (uv) and, for conda
    strategies, conda-env/ (the installed conda packages, channels resolved through
    ``conda_channel_alias`` or ``environ``'s conda configuration) and conda-record/ (what
    the lock and SBOM add of them) into ``out_dir`` (new or empty), atomically."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise StepError("output directory exists and is not empty", source=str(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out_dir.parent))
    try:
        (staging / "Dockerfile").write_text(render_dockerfile(plan, delivery))
        plan.install.write(staging / "env", plan.record.env_dir)  # mounted and copied there
        (staging / "tooling").mkdir()
        write_tooling_wheel(staging / "tooling")
        (staging / "tools").mkdir()
        shutil.copy2(uv_binary(), staging / "tools" / "uv")
        script = staging / "tools" / "install-layer"
        script.write_text(_environment().get_template(INSTALL_LAYER).render(
            env_prefix=plan.env_prefix))
        script.chmod(0o755)
        if plan.install.locked:  # the lock's packages, split into the layers to install
            (staging / "layers").mkdir()
            *groups, rest = plan.install.locked_layers(plan.record.env_dir)
            for name, lines in [*((str(i), g) for i, g in enumerate(groups, 1)),
                                ("rest", rest)]:
                (staging / "layers" / f"{name}.txt").write_text("".join(f"{x}\n" for x in lines))
        if plan.install.strategy in CONDA_STRATEGIES:
            # only conda environments load the conda installer
            from mlflow_steps.build.conda_install import (
                CondaChannels,
                stage_environment,
                write_conda_record,
            )

            environ = os.environ if environ is None else environ
            stage_environment(plan.install, staging / "conda-env", plan.env_prefix,
                              CondaChannels.collect(environ, conda_channel_alias), environ)
            write_conda_record(staging / "conda-env", staging / "conda-record")
        _layer_modes(staging)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir


def _layer_modes(root: Path) -> None:
    """Every directory and file below ``root`` gets the mode its layer is to have, since COPY
    keeps the context's modes: 0755, or 0644 for a file nobody runs (rattler writes
    conda-meta 0600 and entry points 0775, an archive may carry any mode, a strict umask
    would hide the env files from the runtime user). A file rattler hard-linked from its
    cache gets the mode there too: the next install links it with that mode anyway."""
    for directory, subdirectories, files in os.walk(root):
        for name in (*subdirectories, *files):
            path = os.path.join(directory, name)
            mode = os.lstat(path).st_mode
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                continue  # a symbolic link has no mode of its own
            if stat.S_IMODE(mode) != layer_mode(mode):
                os.chmod(path, layer_mode(mode))
