"""Codeset + build options → the frozen environment spec that is hashed and rendered."""

from __future__ import annotations

import json
import os
import re
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from packaging.version import Version

from mlflow_steps import __version__
from mlflow_steps.core.bounded import read_env_text, resolve_inside
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import has_credentials, redact
from mlflow_steps.env.conda import parse_conda_env, parse_conda_lock
from mlflow_steps.env.pixi import read_pixi_lock
from mlflow_steps.env.project import Project, load_project
from mlflow_steps.env.pylock import export_uv_lock, read_pylock
from mlflow_steps.env.python_env import parse_python_env
from mlflow_steps.env.requirements import RequirementsParser, parse_requirements_file
from mlflow_steps.image.platforms import DEFAULT_PLATFORMS
from mlflow_steps.image.reference import check_reference

DEFAULT_PYTHON = "3.11"
MIN_PIP_PYTHON = Version("3.10")
STRATEGIES = ("auto", "pip", "conda")
MLFLOW_NAMES = {"mlflow", "mlflow-skinny"}
ADDED_MLFLOW = "mlflow-skinny<4"
ADDED_S3 = "boto3"
PYTHON_VERSION_FILE = ".python-version"  # uv's pin of a project's Python
_PYTHON_PIN = re.compile(r"(?:cpython-|python)?(3\.\d+)(?:\.\d+)?")


@dataclass(frozen=True)
class BuildOptions:
    """Build inputs that shape the environment (the rest of the step inputs do not)."""

    env_strategy: str = "auto"
    base_image: str | None = None
    base_image_digest: str | None = None
    miniconda_version: str | None = None
    index_url: str | None = None
    extra_index_urls: tuple[str, ...] = ()
    resolve: bool = False  # lock mode: hash the resolved pins (pinning.py)
    dependency_groups: tuple[str, ...] = ()  # a lock's groups to install (none: its defaults)
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS  # the image's (several: an index)

    def __post_init__(self) -> None:
        if self.env_strategy not in STRATEGIES:
            raise StepError(f"'{self.env_strategy}' is not one of {', '.join(STRATEGIES)}",
                            source="input", field="env_strategy")


@dataclass(frozen=True)
class EnvSpec:
    """The normalised environment. ``canonical()`` is exactly what the tag hashes."""

    strategy: str  # pip | conda | conda-lock
    source: str  # codeset-relative env file, or "" for docker_env images
    base_image: str
    base_image_digest: str | None
    python: str | None
    conda_channels: tuple[str, ...] = ()
    conda_dependencies: tuple[str, ...] = ()
    pip: dict[str, Any] = field(default_factory=dict)
    build_requirements: tuple[str, ...] = ()
    added_requirements: tuple[str, ...] = ()
    locked_conda: tuple[dict[str, str], ...] = ()  # for the first platform
    locked_pip: tuple[dict[str, str], ...] = ()  # for the first platform
    # several platforms: each one's (a lock selects per CPU: markers, wheels, conda subdir)
    locked_pip_by_platform: tuple[tuple[str, tuple[dict[str, str], ...]], ...] = ()
    locked_conda_by_platform: tuple[tuple[str, tuple[dict[str, str], ...]], ...] = ()
    build_index_urls: tuple[str, ...] = ()
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS
    local_files: dict[str, Path] = field(default_factory=dict, compare=False)
    reason: str = field(default="", compare=False)  # why ``source``: not hashed

    def canonical(self, template_version: str) -> dict[str, Any]:
        """JSON-ready dict of every build-relevant input; no paths, no credentials."""
        return {
            "strategy": self.strategy,
            "base_image": self.base_image,
            "base_image_digest": self.base_image_digest,
            "python": self.python,
            "conda": {"channels": list(self.conda_channels),
                      "dependencies": sorted(self.conda_dependencies)},
            "pip": self.pip,
            "build_requirements": sorted(self.build_requirements),
            "added_requirements": list(self.added_requirements),
            "locked": {"conda": list(self.locked_conda), "pip": list(self.locked_pip),
                       **({"pip_by_platform": {platform: list(packages) for platform, packages
                                               in self.locked_pip_by_platform}}
                          if self.locked_pip_by_platform else {}),
                       **({"conda_by_platform": {platform: list(packages) for platform, packages
                                                 in self.locked_conda_by_platform}}
                          if self.locked_conda_by_platform else {})},
            "build_index_urls": list(self.build_index_urls),
            "platforms": list(self.platforms),
            "template_version": template_version,
            "tooling_version": __version__,
        }

    def explain(self, template_version: str) -> str:
        """Where the environment comes from and why, then the hashed spec, pretty-printed
        for humans."""
        where = f"# environment: {self.source or 'the base image'}" + (
            f" ({self.reason})" if self.reason else "")
        return where + "\n" + json.dumps(self.canonical(template_version), indent=2,
                                         sort_keys=True)


def strip_credentials(url: str) -> str:
    """Drop credentials from a URL (build-time index URLs may carry them): user:password@,
    and query parameters that carry one (?access_token=, ?X-Amz-Signature=, ...). A URL that
    does not parse is masked whole rather than shown."""
    try:
        parts = urlsplit(url)
        netloc = parts.netloc.rpartition("@")[2]
        query = [(key, value) for key, value in parse_qsl(parts.query, keep_blank_values=True)
                 if not has_credentials(f"?{key}=x")]
        kept = urlencode(query) if len(query) != len(parse_qsl(parts.query, True)) \
            else parts.query
    except ValueError:
        return redact(url)
    stripped = urlunsplit(parts._replace(netloc=netloc, query=kept))
    return stripped if stripped != urlunsplit(parts) else url


def _with_added(names: set[str]) -> tuple[str, ...]:
    """What the step tooling needs that an environment of ``names`` lacks: MLflow, boto3."""
    added = []
    if not names & MLFLOW_NAMES:
        added.append(ADDED_MLFLOW)
    if ADDED_S3 not in names:
        added.append(ADDED_S3)
    return tuple(added)


def _given_base(options: BuildOptions, docker_image: str | None) -> str | None:
    """base_image, else MLproject's docker_env.image, each checked as an image reference."""
    if options.base_image:
        return check_reference(options.base_image, source="input", field="base_image")
    if docker_image:
        return check_reference(docker_image, source="MLproject", field="docker_env.image")
    return None


def _pip_base(python: str, options: BuildOptions, docker_image: str | None) -> str:
    given = _given_base(options, docker_image)
    if given:
        return given
    if Version(python) < MIN_PIP_PYTHON:
        raise StepError(f"python {python} is older than {MIN_PIP_PYTHON}; the step tooling "
                        "needs 3.10+ (or pass base_image)", source="environment", field="python")
    return f"python:{python}-slim"


def _conda_base(options: BuildOptions, docker_image: str | None) -> str:
    """The given base; else miniconda when its version is asked for; else the pip base (the
    conda packages bring their own python: the base needs no conda and no python)."""
    given = _given_base(options, docker_image)
    if given:
        return given
    if options.miniconda_version:
        return check_reference(f"continuumio/miniconda3:{options.miniconda_version}",
                               source="input", field="miniconda_version")
    return f"python:{DEFAULT_PYTHON}-slim"


def resolve_env(codeset: Path, options: BuildOptions,
                environ: dict[str, str] | None = None) -> tuple[Project, EnvSpec]:
    """Parse the codeset and decide strategy, base image and package lists (``environ``:
    where uv runs to read a uv.lock)."""
    project = load_project(codeset)
    spec = _spec(codeset, project, options, environ)
    if options.platforms != DEFAULT_PLATFORMS:
        _check_foreign_platforms(spec, options)
    return project, replace(spec, reason=project.env_reason + spec.reason,
                            platforms=options.platforms)


def _check_foreign_platforms(spec: EnvSpec, options: BuildOptions) -> None:
    """One line when the environment cannot be built for ``options.platforms`` (only the
    direct builder targets another CPU: it installs PyPI and conda environments selected,
    solved or locked for each platform: not pins resolved for linux/amd64)."""
    if options.resolve:
        raise StepError(f"{', '.join(options.platforms)}: {spec.source or 'the environment'} "
                        f"cannot be built for them (--resolve pins for linux/amd64); build it "
                        f"for linux/amd64, or lock it for each platform",
                        source="input", field="platform")


def _spec(codeset: Path, project: Project, options: BuildOptions,
          environ: dict[str, str] | None) -> EnvSpec:
    common = {
        "base_image_digest": options.base_image_digest,
        "build_index_urls": tuple(
            strip_credentials(u)
            for u in ((options.index_url,) if options.index_url else ()) + options.extra_index_urls
        ),
    }
    kind, env_file = project.env_kind, project.env_file
    source = env_file.relative_to(codeset.resolve()).as_posix() if env_file else ""
    groups = options.dependency_groups
    if groups and kind not in ("pylock", "uv-lock", "pixi-lock"):
        raise StepError(f"selects a lock's groups: it applies to pylock.toml, uv.lock and "
                        f"pixi.lock environments, and this codeset's is {source or 'none'}",
                        source="input", field="dependency_groups")
    if kind == "pixi-lock" and len(groups) > 1:
        raise StepError(f"a pixi.lock installs one of its environments; name one, not "
                        f"{len(groups)}", source="input", field="dependency_groups")
    if kind in ("conda-lock", "pixi-lock"):
        assert env_file is not None
        locks = {platform: parse_conda_lock(codeset, env_file, platform)
                 if kind == "conda-lock" else
                 read_pixi_lock(codeset, env_file, *groups, platform=platform)
                 for platform in options.platforms}
        first = locks[options.platforms[0]]
        several = len(locks) > 1
        return EnvSpec(
            strategy="conda-lock", source=source, python=first.python_version,
            base_image=_conda_base(options, project.docker_image),
            locked_conda=tuple(first.conda), locked_pip=tuple(first.pip),
            locked_conda_by_platform=tuple((platform, tuple(lock.conda))
                                           for platform, lock in locks.items()) if several
            else (),
            locked_pip_by_platform=tuple((platform, tuple(lock.pip))
                                         for platform, lock in locks.items()) if several
            else (),
            added_requirements=(ADDED_MLFLOW, ADDED_S3)  # what one platform lacks too
            if any(not {p["name"] for p in lock.conda + lock.pip} & MLFLOW_NAMES
                   for lock in locks.values())
            else (ADDED_S3,), **common,
        )
    if kind in ("pylock", "uv-lock"):
        return _locked_spec(codeset, project, source, options, common, environ)
    if kind == "conda":
        conda = parse_conda_env(codeset, env_file)
        minor = conda.python_minor()
        as_pip = options.env_strategy == "pip" or (
            options.env_strategy == "auto" and conda.only_python_and_pip() and minor
        )
        if as_pip:
            if not conda.only_python_and_pip():
                extra = [d for d in conda.dependencies if d.split(" ")[0] not in ("python", "pip")]
                raise StepError(f"env_strategy pip cannot install conda packages {extra}",
                                source=source, field="dependencies")
            python = minor or DEFAULT_PYTHON
            return _pip_spec(source, python, conda.pip, options, project, common)
        return EnvSpec(
            strategy="conda", source=source, python=conda.python_spec,
            base_image=_conda_base(options, project.docker_image),
            conda_channels=tuple(conda.channels),
            conda_dependencies=tuple(conda.dependencies),
            pip=conda.pip.spec.canonical(), added_requirements=_with_added(conda.pip.spec.names()),
            local_files=dict(conda.pip.local_files), **common,
        )
    if options.env_strategy == "conda":
        raise StepError("env_strategy conda needs a conda.yaml or conda-lock.yml",
                        source=source or "MLproject", field="env_strategy")
    if kind == "python_env":
        env = parse_python_env(codeset, env_file)
        return _pip_spec(source, env.python_minor(), env.runtime, options, project,
                                  common, build_requirements=tuple(env.build.spec.requirements))
    parser = (parse_requirements_file(codeset, env_file) if kind == "requirements"
              else RequirementsParser(codeset))
    return _pip_spec(source, DEFAULT_PYTHON, parser, options, project, common)


def _pip_spec(source: str, python: str, pip: RequirementsParser, options: BuildOptions,
              project: Project, common: dict[str, Any],
              build_requirements: tuple[str, ...] = ()) -> EnvSpec:
    return EnvSpec(
        build_requirements=build_requirements,
        strategy="pip", source=source, python=python,
        base_image=_pip_base(python, options, project.docker_image),
        pip=pip.spec.canonical(), added_requirements=_with_added(pip.spec.names()),
        local_files=dict(pip.local_files), **common,
    )


def _lock_python(codeset: Path, project: Project) -> str:
    """The image's Python for a lock: MLproject's python_env names it, else the codeset's
    .python-version (uv's), else the default."""
    if project.python_env_file is not None:
        return parse_python_env(codeset, project.python_env_file).python_minor()
    if os.path.lexists(codeset / PYTHON_VERSION_FILE):
        pinned = resolve_inside(codeset, codeset, PYTHON_VERSION_FILE,
                                source=PYTHON_VERSION_FILE, field=None)
        text = read_env_text(codeset, pinned).strip().splitlines()
        match = _PYTHON_PIN.fullmatch(text[0].strip()) if text else None
        if not match:
            raise StepError("expected a CPython version like 3.11 or 3.11.7 on its first line",
                            source=PYTHON_VERSION_FILE)
        return match.group(1)
    return DEFAULT_PYTHON


def _locked_spec(codeset: Path, project: Project, source: str, options: BuildOptions,
                 common: dict[str, Any], environ: dict[str, str] | None) -> EnvSpec:
    """A pylock.toml or uv.lock environment: exactly its packages for the image, hash
    checked, no resolver; MLflow and boto3 added (resolved within the locked versions)
    when the lock lacks them, as the step tooling needs them."""
    if options.env_strategy == "conda":
        raise StepError("env_strategy conda needs a conda.yaml or conda-lock.yml",
                        source=source, field="env_strategy")
    python = _lock_python(codeset, project)
    assert project.env_file is not None
    groups = options.dependency_groups
    unchecked = ""
    if project.env_kind == "uv-lock":  # uv selects the groups as it exports
        text, checked = export_uv_lock(codeset, dict(os.environ if environ is None else environ),
                                       groups)
        selected = read_pylock(codeset, project.env_file, python, text=text, source=source,
                               platforms=options.platforms)
        if not checked:
            unchecked = (f"; taken as locked, not checked against pyproject.toml: uv checks "
                         f"with a Python in its requires-python, and the builder runs "
                         f"{sys.version_info[0]}.{sys.version_info[1]}")
    else:
        selected = read_pylock(codeset, project.env_file, python, groups=groups,
                               platforms=options.platforms)
    locked = {platform: tuple(package.canonical() for package in packages)
              for platform, packages in selected.items()}
    everything = [package for packages in selected.values() for package in packages]
    return EnvSpec(
        strategy="pip", source=source, python=python,
        base_image=_pip_base(python, options, project.docker_image),
        locked_pip=locked[options.platforms[0]],
        locked_pip_by_platform=tuple(locked.items()) if len(locked) > 1 else (),
        added_requirements=_with_added(set.intersection(*(  # what one platform lacks too
            {package.name for package in packages} for packages in selected.values()))),
        local_files={PurePosixPath(package.path).name: codeset / package.path
                     for package in everything if package.path},
        reason=unchecked, **common)
