"""pixi projects: ``pixi.lock`` beside ``pixi.toml`` (or a ``pyproject.toml`` with
``[tool.pixi]``). The lock is read by rattler (pixi's own lock library, in its child process):
the conda and PyPI packages its default environment locks for the image's platform (its
conda subdir: linux-64, linux-aarch64), hash-checked like a conda-lock's. pixi is not needed:
the manifest's dependencies for that platform are checked against the lock, so a manifest
changed since ``pixi lock`` is refused."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from packaging.markers import Marker
from packaging.requirements import InvalidRequirement, Requirement
from packaging.specifiers import InvalidSpecifier, SpecifierSet
from packaging.utils import canonicalize_name
from packaging.version import InvalidVersion

from mlflow_steps.core.bounded import quoted, read_env_text, relative_name
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.rattler import run_rattler
from mlflow_steps.env.conda import LockedEnv
from mlflow_steps.image.platforms import (
    DEFAULT_PLATFORMS,
    conda_subdir,
    environment_markers,
    machine,
)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

PIXI_LOCK = "pixi.lock"
PIXI_MANIFEST = "pixi.toml"
PYPROJECT = "pyproject.toml"
DEFAULT_ENVIRONMENT = "default"
RELOCK = "run `pixi lock`"


def pixi_manifest(codeset: Path) -> Path | None:
    """pixi.toml, else a pyproject.toml with a [tool.pixi] table, else None."""
    if (codeset / PIXI_MANIFEST).is_file():
        return codeset / PIXI_MANIFEST
    pyproject = codeset / PYPROJECT
    if pyproject.is_file() and "pixi" in _toml(codeset, pyproject).get("tool", {}):
        return pyproject
    return None


def read_pixi_lock(codeset: Path, path: Path, environment: str = DEFAULT_ENVIRONMENT,
                   platform: str = DEFAULT_PLATFORMS[0]) -> LockedEnv:
    """The packages ``path``'s ``environment`` locks for the image ``platform``, once the
    manifest's dependencies for it are found among them."""
    subdir = conda_subdir(platform)
    source = relative_name(codeset, path)
    manifest = pixi_manifest(codeset)
    if manifest is None:
        raise StepError(f"{PIXI_LOCK} without {PIXI_MANIFEST} (or a {PYPROJECT} with "
                        f"[tool.pixi]): the lock cannot be checked; add the manifest",
                        source=source)
    conda_specs, pypi_requirements = _manifest_dependencies(codeset, manifest, subdir)
    read_env_text(codeset, path)  # confined, bounded, text
    answer = run_rattler("read_lock", {"path": str(path), "environment": environment,
                                       "platform": subdir,
                                       "specs": [spec for _, spec in conda_specs]},
                         source=source, action="reading it")
    if "platforms" not in answer:
        raise StepError(f"no {environment!r} environment (it has: "
                        f"{', '.join(answer['environments']) or 'none'})", source=source,
                        field="environments")
    if "conda" not in answer or not answer["conda"]:
        raise StepError(f"no {subdir} packages (locked for: "
                        f"{', '.join(answer['platforms']) or 'none'}); add {subdir} to "
                        f"the workspace's platforms and {RELOCK}", source=source,
                        field=f"environments.{environment}.packages")
    fields = {spec: field for field, spec in conda_specs}
    for spec in answer["unmatched"]:
        raise StepError(f"does not satisfy {manifest.name} any more ({fields[spec]}: no "
                        f"locked package matches {quoted(spec)}); {RELOCK}", source=source)
    env = LockedEnv()
    for record in answer["conda"]:
        env.conda.append({key: record[key] for key in ("name", "version", "url", "md5",
                                                       "sha256") if record.get(key)})
        if record["name"] == "python":
            env.python_version = record["version"]
    for package in answer["pypi"]:
        entry = _pypi_entry(codeset, package, source)
        if entry is not None:
            env.pip.append(entry)
    _check_pypi(pypi_requirements, env, manifest.name, source, platform)
    env.conda.sort(key=lambda e: (e["name"], e["url"]))
    env.pip.sort(key=lambda e: (e["name"], e["url"]))
    return env


def _toml(codeset: Path, path: Path) -> dict[str, Any]:
    source = relative_name(codeset, path)
    try:
        return tomllib.loads(read_env_text(codeset, path))
    except tomllib.TOMLDecodeError as exc:
        raise StepError(f"not valid TOML ({exc})", source=source) from None


def _manifest_dependencies(codeset: Path, manifest: Path, subdir: str
                           ) -> tuple[list[tuple[str, str]], list[tuple[str, Requirement]]]:
    """(field, conda match spec) and (field, PyPI requirement) the manifest asks for on
    ``subdir``: its dependencies and that target's, its pypi-dependencies, and a pyproject's
    [project] dependencies."""
    data = _toml(codeset, manifest)
    pixi, prefix = (data, "") if manifest.name == PIXI_MANIFEST else (
        data["tool"]["pixi"], "tool.pixi.")
    conda: list[tuple[str, str]] = []
    pypi: list[tuple[str, Requirement]] = []
    for table, field in ((pixi, prefix), (pixi.get("target", {}).get(subdir, {}),
                                          f"{prefix}target.{subdir}.")):
        for name, value in (table.get("dependencies") or {}).items():
            conda.append((f"{field}dependencies.{name}", _conda_spec(name, value)))
        for name, value in (table.get("pypi-dependencies") or {}).items():
            requirement = _pypi_requirement(name, value, f"{field}pypi-dependencies.{name}",
                                            manifest.name)
            if requirement is not None:
                pypi.append((f"{field}pypi-dependencies.{name}", requirement))
    if manifest.name == PYPROJECT:
        for index, text in enumerate(data.get("project", {}).get("dependencies") or []):
            field = f"project.dependencies[{index}]"
            pypi.append((field, _parse_requirement(text, field, manifest.name)))
    return conda, pypi


def _conda_spec(name: str, value: Any) -> str:
    version = value.get("version", "*") if isinstance(value, dict) else str(value)
    return name if version.strip() in ("", "*") else f"{name} {version}"


def _pypi_requirement(name: str, value: Any, field: str, source: str) -> Requirement | None:
    """A registry dependency as a requirement; path, git and URL ones are checked by what
    the lock holds for them (a local path is refused there)."""
    if isinstance(value, dict):
        if not {"path", "git", "url"}.isdisjoint(value):
            return None
        value = value.get("version", "*")
    version = "" if str(value).strip() in ("", "*") else str(value)
    return _parse_requirement(f"{name}{version}", field, source)


def _parse_requirement(text: str, field: str, source: str) -> Requirement:
    try:
        return Requirement(text)
    except (InvalidRequirement, InvalidSpecifier) as exc:
        raise StepError(f"{quoted(text)} is not a valid requirement ({exc})", source=source,
                        field=field) from None


def _pypi_entry(codeset: Path, package: dict[str, Any], source: str) -> dict[str, str] | None:
    """A locked PyPI package as a conda-lock pip entry; the project itself (the codeset's
    directory, which pixi installs editable) is left out, as uv's export does."""
    location = package["location"]
    if urlsplit(location).scheme in ("http", "https"):
        entry = {"name": canonicalize_name(package["name"]), "version": package["version"],
                 "url": location}
        if package["hashes"].get("sha256"):
            entry["sha256"] = package["hashes"]["sha256"]
        return entry
    if (codeset / location).resolve() == codeset.resolve():
        return None
    raise StepError(f"{quoted(location, 60)} is a local path or VCS source, which the image "
                    f"build does not build; lock a wheel from an index instead",
                    source=source, field=f"packages.{package['name']}")


def _check_pypi(requirements: list[tuple[str, Requirement]], env: LockedEnv,
                manifest: str, source: str, platform: str) -> None:
    """Each PyPI requirement that applies on the image (``platform``) is met by a locked
    package (PyPI's, or conda's of the same name, as pixi maps them)."""
    minor = ".".join(env.python_version.split(".")[:2]) if env.python_version else None
    marker_env = environment_markers(f"{minor}.0", machine(platform)) if minor else None
    versions = {canonicalize_name(p["name"]): p["version"] for p in env.conda + env.pip}
    for field, requirement in requirements:
        marker: Marker | None = requirement.marker
        if marker is not None and marker_env and not marker.evaluate(marker_env):  # type: ignore[arg-type]
            continue
        version = versions.get(canonicalize_name(requirement.name))
        if version is not None and _contains(requirement.specifier, version):
            continue
        raise StepError(f"does not satisfy {manifest} any more ({field}: no locked package "
                        f"matches {quoted(str(requirement))}); {RELOCK}", source=source)


def _contains(specifier: SpecifierSet, version: str) -> bool:
    try:
        return specifier.contains(version, prereleases=True)
    except InvalidVersion:  # a conda version PEP 440 cannot read: its name is enough
        return True
