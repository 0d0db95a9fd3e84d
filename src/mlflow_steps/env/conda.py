"""conda environment files and conda-lock lockfiles."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_steps.core.bounded import quoted, relative_name
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.yaml_file import load_yaml_mapping, require_str_list, written_text
from mlflow_steps.env.requirements import RequirementsParser, reject_credentials, yaml_lines
from mlflow_steps.image.platforms import DEFAULT_PLATFORMS, conda_subdir

PIP_ONLY_PACKAGES = {"python", "pip"}
_EXACT_PYTHON = re.compile(r"^=?=?\s*(\d+\.\d+)(\.\d+)?(\.\*)?$")
_CONDA_ADVICE = ("configure them with conda config (.condarc) or CONDA_* variables at build "
                 "time instead of the codeset")
_TOKEN_PATH = re.compile(r"(?:^|/)t/[^/]{8,}/")


@dataclass
class CondaEnv:
    """A normalised conda environment: channels (ordered), conda specs, a pip section."""

    channels: list[str]
    dependencies: list[str]
    pip: RequirementsParser
    python_spec: str | None = None

    def only_python_and_pip(self) -> bool:
        """True when the conda part carries nothing pip cannot provide."""
        return all(spec.split(" ")[0] in PIP_ONLY_PACKAGES for spec in self.dependencies)

    def python_minor(self) -> str | None:
        """'X.Y' when the python spec pins one minor version, else None."""
        match = _EXACT_PYTHON.match(self.python_spec or "")
        return match.group(1) if match else None


@dataclass
class LockedEnv:
    """The packages a conda-lock or pixi lockfile locks for one platform."""

    conda: list[dict[str, str]] = field(default_factory=list)
    pip: list[dict[str, str]] = field(default_factory=list)
    python_version: str | None = None


# The plain specs of most environment files, normalised here exactly as conda's MatchSpec
# does (a property test checks that against conda-lock), so hashing them needs no conda-lock
# import (~0.25 s): `name`, `name=1.2` → `1.2.*`, `name==1.2` → `1.2`, `name>=1.2`, ...
_PLAIN_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_PLAIN_VERSION = r"[0-9][0-9A-Za-z]*(?:\.[0-9A-Za-z]+)*"
_PLAIN_SPEC = re.compile(
    rf"(?P<name>{_PLAIN_NAME})(?:\s*(?P<op>==|=|>=|<=|!=|>|<)\s*"
    rf"(?P<version>{_PLAIN_VERSION})(?P<star>\.\*)?)?")


def _plain_conda_spec(spec: str) -> str | None:
    """The canonical text of a plain spec, or None when MatchSpec must parse it."""
    match = _PLAIN_SPEC.fullmatch(spec.strip())
    if match is None or (match["star"] and match["op"] not in ("=", "==")):
        return None
    name = match["name"].lower()
    if match["op"] is None:
        return name
    if match["op"] == "=" or match["star"]:
        return f"{name} {match['version']}.*"
    if match["op"] == "==":
        return f"{name} {match['version']}"
    return f"{name} {match['op']}{match['version']}"


def normalise_conda_spec(spec: str, *, source: str, field: str) -> str:
    """Canonical 'channel::name version build' as conda's MatchSpec reads it."""
    plain = _plain_conda_spec(spec)
    return plain if plain is not None else matchspec_text(spec, source=source, field=field)


def matchspec_text(spec: str, *, source: str, field: str) -> str:
    """Canonical 'channel::name version build' via conda-lock's MatchSpec parser."""
    # conda-lock loads only for conda environments
    from conda_lock.src_parser.conda_common import conda_spec_to_versioned_dep

    try:
        dep = conda_spec_to_versioned_dep(spec, "main")
    except Exception as exc:  # conda's MatchSpec raises several unrelated types
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise StepError(f"{quoted(spec)} is not a valid conda spec ({quoted(first)[1:-1]})",
                        source=source, field=field) from None
    text = dep.name.lower()
    if dep.conda_channel:
        text = f"{dep.conda_channel}::{text}"
    version = (dep.version or "").replace(" ", "")
    if version and version != "*":
        text += f" {version}"
    if dep.build:
        text += f" {dep.build}"
    return text


def parse_conda_env(codeset: Path, path: Path) -> CondaEnv:
    """Parse a conda environment YAML (name/prefix ignored, channel order kept)."""
    name = relative_name(codeset, path)
    data = load_yaml_mapping(codeset, path)
    if "dependencies" not in data:
        raise StepError("missing 'dependencies' list", source=name, field="dependencies")
    channels = require_str_list(data.get("channels") or [], source=name, field="channels")
    for index, channel in enumerate(channels):
        _reject_channel_credentials(channel, source=name, field=f"channels[{index}]")
    raw = data["dependencies"]
    if not isinstance(raw, list) or not raw:
        raise StepError("expected a non-empty list", source=name, field="dependencies")
    env = CondaEnv(channels=[c.strip() for c in channels], dependencies=[],
                   pip=RequirementsParser(codeset))
    for index, item in enumerate(raw):
        where = f"dependencies[{index}]"
        if isinstance(item, dict) and set(item) == {"pip"}:
            lines = require_str_list(item["pip"], source=name, field=f"{where}.pip")
            env.pip.parse_lines(yaml_lines(lines, f"{where}.pip"), path.parent, source=name)
        elif isinstance(item, dict) and len(item) == 1:
            raise _mapping_spec(item, source=name, field=where)
        elif written_text(item) is not None:
            raise StepError(f"{written_text(item)} was read as the number {item!r}; quote it",
                            source=name, field=where)
        elif isinstance(item, str | int | float) and not isinstance(item, bool):
            if "://" in str(item) or "/t/" in str(item):
                _reject_channel_credentials(str(item), source=name, field=where)
            spec = normalise_conda_spec(str(item), source=name, field=where)
            env.dependencies.append(spec)
            package, _, version = spec.partition(" ")
            if package.split("::")[-1] == "python":
                env.python_spec = version or None
        else:
            raise StepError("expected a conda spec string or a {pip: [...]} mapping",
                            source=name, field=where)
    return env


def _reject_channel_credentials(channel: str, *, source: str, field: str) -> None:
    """Channels (and specs naming one) with credentials: user:password@, a credential query
    parameter, or an anaconda.org token path (/t/TOKEN/)."""
    if _TOKEN_PATH.search(channel):
        raise StepError(f"channel embeds an anaconda.org token (/t/...); {_CONDA_ADVICE}",
                        source=source, field=field)
    if "://" in channel:
        reject_credentials(channel.split("::")[0], source=source, field=field,
                           advice=_CONDA_ADVICE)


def _mapping_spec(item: dict, *, source: str, field: str) -> StepError:
    """`- python: 3.10` is a mapping (and 3.10 the number 3.1), not the spec `python=3.10`."""
    (key, value), = item.items()
    text = written_text(value)
    if text is not None and isinstance(key, str):
        return StepError(f"{key}: {text} was read as the number {value!r}; quote it as a conda "
                         f"spec: \"{key}={text}\"", source=source, field=field)
    return StepError("expected a conda spec string like 'name=1.2', got a mapping (write "
                     "'name=version', not 'name: version')", source=source, field=field)


def parse_conda_lock(codeset: Path, path: Path, platform: str = DEFAULT_PLATFORMS[0]
                     ) -> LockedEnv:
    """Read a conda-lock lockfile with conda-lock's own model; keep the image ``platform``'s
    packages (its conda subdir's)."""
    subdir = conda_subdir(platform)
    # conda-lock loads only for conda environments
    from conda_lock.lockfile import parse_conda_lock_file

    name = relative_name(codeset, path)
    load_yaml_mapping(codeset, path)  # bounded read + one-line YAML errors first
    try:
        lockfile = parse_conda_lock_file(path)
    except Exception as exc:  # pydantic ValidationError and version errors
        errors = exc.errors() if hasattr(exc, "errors") else []
        if errors:
            where = ".".join(str(part) for part in errors[0]["loc"])
            raise StepError(f"not a valid conda-lock lockfile: {errors[0]['msg']}",
                            source=name, field=where) from None
        first = str(exc).splitlines()[0]
        raise StepError(f"not a valid conda-lock lockfile ({first})", source=name) from None
    env = LockedEnv()
    for package in lockfile.package:
        if package.platform != subdir:
            continue
        entry = {"name": package.name, "version": package.version, "url": package.url,
                 **{k: v for k, v in package.hash.model_dump().items() if v}}
        (env.pip if package.manager == "pip" else env.conda).append(entry)
        if package.name == "python" and package.manager == "conda":
            env.python_version = package.version
    if not env.conda:
        raise StepError(f"no {subdir} conda packages; lock for {subdir}",
                        source=name, field="package")
    env.conda.sort(key=lambda e: (e["name"], e["url"]))
    env.pip.sort(key=lambda e: (e["name"], e["url"]))
    return env
