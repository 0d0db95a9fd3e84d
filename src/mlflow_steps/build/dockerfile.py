"""Render the build context (Dockerfile, normalised env files, tooling) from an EnvSpec."""

from __future__ import annotations

import base64
import calendar
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

import yaml

from mlflow_steps import __version__
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.hashing import (
    PACKAGE_DIR,
    SOURCE_DATE_EPOCH,
    TEMPLATES_DIR,
    env_tag,
    spec_digest,
    tooling_files,
)
from mlflow_steps.env.pip_secrets import NO_MOUNTS, UV_CONFIG_TARGET, PipConfigDelivery
from mlflow_steps.env.spec import EnvSpec

if TYPE_CHECKING:
    import jinja2

BUILD_DIR = "/opt/mlflow-steps-build"
ENV_PREFIX = "/opt/env"
LOCK_PATH = f"{BUILD_DIR}/lock.txt"  # what was installed (name==version), written at build
SBOM_PATH = f"{BUILD_DIR}/sbom.cdx.json"  # CycloneDX JSON of the environment
SBOM_TOOL = "cyclonedx-bom==7.5.0"  # run from the build cache, never in a layer
# Reproducible output; no schema validation of the generator's own output (it takes 5-12 s
# per environment, and the output is the same)
SBOM_ARGS = ("environment", "--no-validate", "--output-reproducible", "--of", "JSON")
TOOLING_PREFIX = "/opt/mlflow-steps"
# Owned by the runtime user in the image itself; never the codeset mount (/project), which
# only exists when a step runs, nor any path a builder uses.
WORKDIR = "/srv/mlflow"
CODESET_PATH = "/project"
RUNTIME_UID = 1000
# What `mlflow-steps run` needs in a runtime image (rendering, and so jinja2, is not run there).
TOOLING_REQUIREMENTS = (
    "click>=8.1",
    "packaging>=23",
    "pyyaml>=6",
    "requests>=2.31",
    "urllib3>=2",  # the registry client (image records) speaks urllib3 2's API
    "certifi",
    "mlflow-skinny>=2.10,<4",
    "boto3>=1.28",  # S3 artifact stores: the step checks the model the run logged there
)
# Packages installed as layers of their own (in this order, before the rest) when the
# environment has them: large, and rarely what a one-line requirements change touches.
OWN_LAYERS = (("numpy",), ("scipy",), ("pandas",), ("scikit-learn",), ("pyarrow",),
              ("torch",), ("botocore", "boto3", "s3transfer"), ("mlflow", "mlflow-skinny"))
INSTALL_LAYER = "install-layer.sh.j2"
# Set from the first step of every runtime image on.
BUILD_ENV = {"PIP_NO_CACHE_DIR": "1", "PIP_DISABLE_PIP_VERSION_CHECK": "1",
             "PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1",
             "GIT_PYTHON_REFRESH": "quiet"}
RUNTIME_USER = str(RUNTIME_UID)
IMAGE_COMMAND = (f"{TOOLING_PREFIX}/bin/mlflow-steps", "run", CODESET_PATH)
CONDA_STRATEGIES = ("conda", "conda-lock")
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


def requirements_text(spec: EnvSpec) -> str:
    pip = spec.pip
    lines = []
    if pip.get("index_url"):
        lines.append(f"--index-url {pip['index_url']}")
    lines += [f"--extra-index-url {u}" for u in pip.get("extra_index_urls", [])]
    lines += [f"--find-links {u}" for u in pip.get("find_links", [])]
    lines += [opt.replace("=", " ", 1) for opt in pip.get("options", [])]
    if pip.get("constraints"):
        lines.append(f"-c {BUILD_DIR}/env/constraints.txt")
    lines += pip.get("requirements", [])
    lines += [f"{BUILD_DIR}/env/wheels/{name}" for name, _ in pip.get("local_artifacts", [])]
    lines += list(spec.added_requirements)
    return "\n".join(lines) + "\n"


def _env_files(spec: EnvSpec) -> dict[str, str]:
    files = {"requirements.txt": requirements_text(spec)}
    if spec.pip.get("constraints"):
        files["constraints.txt"] = "\n".join(spec.pip["constraints"]) + "\n"
    if spec.build_requirements:
        files["build-requirements.txt"] = "\n".join(sorted(spec.build_requirements)) + "\n"
    if spec.strategy == "conda":
        environment = {"channels": list(spec.conda_channels),
                       "dependencies": sorted(spec.conda_dependencies)}
        if "pip" not in {d.split(" ")[0] for d in spec.conda_dependencies}:
            environment["dependencies"].append("pip")
        files["environment.yml"] = yaml.safe_dump(environment, sort_keys=False)
    if spec.strategy == "conda-lock":
        urls = [f"{p['url']}#{p['md5']}" if p.get("md5") else p["url"] for p in spec.locked_conda]
        files["conda-explicit.txt"] = "@EXPLICIT\n" + "\n".join(urls) + "\n"
        if spec.locked_pip:
            files["requirements.lock.txt"] = "".join(
                f"{p['name']} @ {p['url']}"
                + (f" --hash=sha256:{p['sha256']}" if p.get("sha256") else "") + "\n"
                for p in spec.locked_pip
            )
    return files


TOOLING_WHEEL = f"mlflow_steps-{__version__}-py3-none-any.whl"
WHEEL_DATE = (1980, 1, 1, 0, 0, 0)  # zip's earliest: the wheel's bytes depend on content only


def record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return f"sha256={digest.decode()}"


def tooling_wheel_files() -> dict[str, bytes]:
    """The step tooling as a wheel's files: package sources, templates and metadata."""
    files = {f"mlflow_steps/{path.relative_to(PACKAGE_DIR).as_posix()}": path.read_bytes()
             for path in tooling_files()}
    info = f"mlflow_steps-{__version__}.dist-info"
    files[f"{info}/METADATA"] = "".join(
        ["Metadata-Version: 2.1\nName: mlflow-steps\n", f"Version: {__version__}\n",
         "Requires-Python: >=3.10\n", *(f"Requires-Dist: {r}\n" for r in TOOLING_REQUIREMENTS)]
    ).encode()
    files[f"{info}/WHEEL"] = (b"Wheel-Version: 1.0\nGenerator: mlflow-steps\n"
                              b"Root-Is-Purelib: true\nTag: py3-none-any\n")
    files[f"{info}/entry_points.txt"] = (b"[console_scripts]\n"
                                         b"mlflow-steps = mlflow_steps.cli.main:main\n")
    record = "".join(f"{name},{record_hash(data)},{len(data)}\n"
                     for name, data in sorted(files.items()))
    files[f"{info}/RECORD"] = (record + f"{info}/RECORD,,\n").encode()
    return files


def write_tooling_wheel(directory: Path) -> Path:
    """Write the tooling wheel (no build backend needed to install it; same bytes for the
    same sources)."""
    path = directory / TOOLING_WHEEL
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as wheel:
        for name, data in tooling_wheel_files().items():  # RECORD last
            entry = zipfile.ZipInfo(name, WHEEL_DATE)
            entry.external_attr = 0o644 << 16
            entry.compress_type = zipfile.ZIP_DEFLATED
            wheel.writestr(entry, data)
    stamp = calendar.timegm((*WHEEL_DATE, 0, 0, 0))
    os.utime(path, (stamp, stamp))  # uv records a local wheel's mtime in the environment
    return path


def uv_binary() -> Path:
    """The uv executable put in build contexts (bind-mounted by RUN, never in a layer)."""
    import uv

    return Path(uv.find_uv_bin())


def runtime_env(spec: EnvSpec) -> dict[str, str]:
    """What the image's last ENV sets (``$PATH`` is the base's)."""
    return {"PATH": f"{ENV_PREFIX}/bin:$PATH", "MLFLOW_STEPS_ENV": ENV_PREFIX,
            "MLFLOW_STEPS_ENV_TAG": env_tag(spec)}


def image_labels(spec: EnvSpec) -> dict[str, str]:
    """The labels every runtime image carries, whichever builder made it."""
    return {"org.opencontainers.image.title": "mlflow-steps runtime",
            "org.opencontainers.image.version": env_tag(spec),
            "org.opencontainers.image.base.name": spec.base_image,
            "io.mlflow-steps.env-tag": env_tag(spec),
            "io.mlflow-steps.spec-digest": spec_digest(spec),
            "io.mlflow-steps.strategy": spec.strategy,
            "io.mlflow-steps.tooling-version": __version__,
            "io.mlflow-steps.lock": LOCK_PATH,
            "io.mlflow-steps.sbom": SBOM_PATH}


def render_dockerfile(spec: EnvSpec, delivery: PipConfigDelivery = NO_MOUNTS) -> str:
    """The Dockerfile text for ``spec``."""
    template = _environment().get_template(TEMPLATES[spec.strategy])
    return template.render(
        tooling_version=__version__,
        tag=env_tag(spec),
        spec_digest=spec_digest(spec),
        source_date_epoch=SOURCE_DATE_EPOCH,
        lock_path=LOCK_PATH,
        sbom_path=SBOM_PATH,
        sbom_tool=SBOM_TOOL,
        sbom_args=" ".join(SBOM_ARGS),
        strategy=spec.strategy,
        source=spec.source,
        base_image=spec.base_image,
        build_dir=BUILD_DIR,
        env_prefix=ENV_PREFIX,
        tooling_prefix=TOOLING_PREFIX,
        tooling_python="python3",
        workdir=WORKDIR,
        codeset_path=CODESET_PATH,
        uid=RUNTIME_UID,
        pip_prefix=delivery.prefix(),
        uv_config=UV_CONFIG_TARGET,
        tooling_wheel=TOOLING_WHEEL,
        layers=OWN_LAYERS,
        has_build_requirements=bool(spec.build_requirements),
        has_locked_pip=bool(spec.locked_pip),
        build_env=BUILD_ENV,
        runtime_env=runtime_env(spec),
        labels=image_labels(spec),
        command=json.dumps(list(IMAGE_COMMAND)),
    )


def write_context(spec: EnvSpec, out_dir: Path,
                  delivery: PipConfigDelivery = NO_MOUNTS,
                  conda_channel_alias: str | None = None,
                  environ: Mapping[str, str] | None = None) -> Path:
    """Write Dockerfile, env/, tooling/ (the tooling wheel), tools/ (uv) and, for conda
    strategies, conda-env/ (the installed conda packages, channels resolved through
    ``conda_channel_alias`` or ``environ``'s conda configuration) into ``out_dir`` (new or
    empty), atomically."""
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise StepError("output directory exists and is not empty", source=str(out_dir))
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".render-", dir=out_dir.parent))
    try:
        (staging / "Dockerfile").write_text(render_dockerfile(spec, delivery))
        env_dir = staging / "env"
        env_dir.mkdir()
        for name, text in _env_files(spec).items():
            (env_dir / name).write_text(text)
        if spec.local_files:
            (env_dir / "wheels").mkdir()
            for name, path in spec.local_files.items():
                shutil.copyfile(path, env_dir / "wheels" / name)
        (staging / "tooling").mkdir()
        write_tooling_wheel(staging / "tooling")
        (staging / "tools").mkdir()
        shutil.copy2(uv_binary(), staging / "tools" / "uv")
        script = staging / "tools" / "install-layer"
        script.write_text(_environment().get_template(INSTALL_LAYER).render(
            env_prefix=ENV_PREFIX))
        script.chmod(0o755)
        if spec.strategy in CONDA_STRATEGIES:
            from mlflow_steps.build.conda_install import CondaChannels, stage_environment

            environ = os.environ if environ is None else environ
            stage_environment(spec, staging / "conda-env", ENV_PREFIX,
                              CondaChannels.collect(environ, conda_channel_alias), environ)
        if out_dir.exists():
            out_dir.rmdir()
        os.replace(staging, out_dir)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out_dir
