"""MLproject: shape checks and the fields the steps need (no MLflow import)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_steps.core.bounded import broken_link, quoted, resolve_inside
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.yaml_file import describe, load_yaml_mapping

MLPROJECT = "MLproject"
CONDA_LOCK_FILE = "conda-lock.yml"
CONDA_FILE = "conda.yaml"
PYTHON_ENV_FILE = "python_env.yaml"
REQUIREMENTS_FILE = "requirements.txt"
PYLOCK_FILE = "pylock.toml"  # or one pylock.<name>.toml (PEP 751)
PIXI_LOCK_FILE = "pixi.lock"  # with pixi.toml (or pyproject.toml's [tool.pixi])
UV_LOCK_FILE = "uv.lock"  # with pyproject.toml: a uv project
PYPROJECT_FILE = "pyproject.toml"
ENV_FIELDS = ("conda_env", "python_env", "docker_env")
PARAMETER_TYPES = {"string", "float", "int", "path", "uri"}


@dataclass(frozen=True)
class Parameter:
    """A typed entry-point parameter."""

    name: str
    type: str
    default: Any


@dataclass(frozen=True)
class EntryPoint:
    """An MLproject entry point: command template and parameters."""

    name: str
    command: str
    parameters: tuple[Parameter, ...]


@dataclass(frozen=True)
class Project:
    """What the steps need from MLproject."""

    name: str | None
    entry_points: dict[str, EntryPoint]
    # conda-lock | pixi-lock | pylock | uv-lock | conda | python_env | requirements | none
    env_kind: str
    env_file: Path | None
    docker_image: str | None
    env_reason: str = ""  # why that file: `hash --explain` says it
    python_env_file: Path | None = None  # MLproject's python_env beside a lock: its python


def find_mlproject(codeset: Path) -> Path:
    """The MLproject file (MLflow matches the name case-insensitively)."""
    if not codeset.is_dir():
        raise StepError("codeset directory not found", source=str(codeset))
    for entry in sorted(codeset.iterdir()):
        if entry.name.lower() != MLPROJECT.lower():
            continue
        problem = broken_link(entry)
        if problem:
            raise StepError(problem, source=entry.name)
        if not entry.is_dir():  # a FIFO or device is refused by the reader, with its kind
            return resolve_inside(codeset, codeset, entry.name, source=entry.name, field=None)
    raise StepError("no MLproject file in the codeset; add one with a 'main' entry point",
                    source=f"{codeset.name}/{MLPROJECT}")


def _key(name: Any, *, what: str, field: str) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StepError(f"{what} names must be non-empty strings, got {describe(name)}",
                        source=MLPROJECT, field=field)
    return name


def _check_default(ptype: str, default: Any, field: str) -> None:
    """MLflow converts defaults to the parameter's type when the run starts; fail now."""
    if default is None:
        return
    if isinstance(default, dict | list):
        raise StepError(f"default must be a single value, got {describe(default)}",
                        source=MLPROJECT, field=field)
    if ptype == "string":
        ok = isinstance(default, str | int | float)
    elif ptype in ("path", "uri"):
        ok = isinstance(default, str)
    elif ptype == "float":
        ok = _converts(default, float)
    else:  # int
        ok = _converts(default, int) or (
            isinstance(default, float) and not isinstance(default, bool) and default.is_integer())
    if not ok:
        raise StepError(f"default does not fit type {ptype} (got {describe(default)})",
                        source=MLPROJECT, field=field)


def _converts(value: Any, kind: type) -> bool:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        return False
    if isinstance(value, float) and kind is int:
        return False
    try:
        kind(value)
    except (ValueError, OverflowError):
        return False
    return True


def _parameter_spec(pspec: Any, field: str) -> tuple[str, Any]:
    """(type, default) of one parameter spec: a type name or {type, default}."""
    expected = (f"expected a type name ({', '.join(sorted(PARAMETER_TYPES))}) or a mapping "
                "with 'type' and 'default'")
    if isinstance(pspec, str):
        ptype, default = pspec, None
    elif isinstance(pspec, dict):
        ptype, default = pspec.get("type", "string"), pspec.get("default")
        if not isinstance(ptype, str):
            raise StepError(f"type must be one of {sorted(PARAMETER_TYPES)}, got "
                            f"{describe(ptype)}", source=MLPROJECT, field=f"{field}.type")
    else:
        raise StepError(f"{expected}, got {describe(pspec)}", source=MLPROJECT, field=field)
    if ptype not in PARAMETER_TYPES:
        raise StepError(f"type must be one of {sorted(PARAMETER_TYPES)}", source=MLPROJECT,
                        field=field)
    _check_default(ptype, default, f"{field}.default")
    return ptype, default


def _check_shape(data: dict[str, Any]) -> None:
    present = [name for name in ENV_FIELDS if name in data]
    if len(present) > 1:
        raise StepError(f"declares both {present[0]} and {present[1]}; keep exactly one",
                        source=MLPROJECT, field=present[1])
    name = data.get("name")
    if name is not None and (isinstance(name, bool) or not isinstance(name, str | int | float)):
        raise StepError(f"expected a string, got {describe(name)}", source=MLPROJECT,
                        field="name")
    if "entry_points" not in data:
        raise StepError("missing 'entry_points' mapping", source=MLPROJECT, field="entry_points")
    entry_points = data["entry_points"]
    if not isinstance(entry_points, dict):
        raise StepError(f"expected a mapping of entry point names to {{command, parameters}}, "
                        f"got {describe(entry_points)}", source=MLPROJECT, field="entry_points")
    for entry, spec in entry_points.items():
        where = f"entry_points.{_key(entry, what='entry point', field='entry_points')}"
        if not isinstance(spec, dict):
            raise StepError(f"expected a mapping with a 'command' string, got {describe(spec)}",
                            source=MLPROJECT, field=where)
        command = spec.get("command")
        if command is None:
            raise StepError("expected a mapping with a 'command' string", source=MLPROJECT,
                            field=where)
        if not isinstance(command, str):
            raise StepError(f"the command must be a string, got {describe(command)}",
                            source=MLPROJECT, field=f"{where}.command")
        if not command.strip():
            raise StepError("the command is empty", source=MLPROJECT, field=f"{where}.command")
        params = spec.get("parameters")
        if params is None:
            continue
        if not isinstance(params, dict):
            raise StepError(f"expected a mapping of parameter names to types, got "
                            f"{describe(params)}", source=MLPROJECT, field=f"{where}.parameters")
        for pname, pspec in params.items():
            pname = _key(pname, what="parameter", field=f"{where}.parameters")
            _parameter_spec(pspec, f"{where}.parameters.{pname}")
    if "main" not in entry_points:
        raise StepError("no 'main' entry point", source=MLPROJECT, field="entry_points.main")
    docker_env = data.get("docker_env")
    if docker_env is not None and not (
        isinstance(docker_env, dict) and isinstance(docker_env.get("image"), str)
    ):
        raise StepError("expected a mapping with an 'image' string", source=MLPROJECT,
                        field="docker_env.image")


def _present(path: Path) -> bool:
    """Whether a directory entry exists at all (a broken symlink or a FIFO counts)."""
    return os.path.lexists(path)


ENV_ORDER = (f"{CONDA_LOCK_FILE}; MLproject's conda_env; {PIXI_LOCK_FILE}; {PYLOCK_FILE} "
             f"(or one pylock.<name>.toml); {UV_LOCK_FILE} with {PYPROJECT_FILE}; MLproject's "
             f"python_env; {CONDA_FILE}; {PYTHON_ENV_FILE}; {REQUIREMENTS_FILE}")


def _select_env(codeset: Path, data: dict[str, Any]) -> tuple[str, Path | None, str]:
    """The environment file, its kind and why it was chosen: the first present of
    ENV_ORDER (locks before what they lock)."""
    path = _default_file(codeset, CONDA_LOCK_FILE)
    if path is not None:
        return "conda-lock", path, "a conda lock comes first"
    if "conda_env" not in data:
        pixi_lock = _default_file(codeset, PIXI_LOCK_FILE)
        if pixi_lock is not None:
            return "pixi-lock", pixi_lock, "a pixi lock (conda and PyPI) comes before the others"
        lock = _pylock_file(codeset)
        if lock is not None:
            return "pylock", lock, "a PEP 751 lock comes before unlocked specs"
        uv_lock = _default_file(codeset, UV_LOCK_FILE)
        if uv_lock is not None:
            if _default_file(codeset, PYPROJECT_FILE) is None:
                raise StepError(f"{UV_LOCK_FILE} without {PYPROJECT_FILE}: uv cannot check "
                                f"the lock; add the project's {PYPROJECT_FILE}",
                                source=UV_LOCK_FILE)
            return "uv-lock", uv_lock, "a uv lock comes before unlocked specs"
    kind, path = _declared_or_default(codeset, data)
    return kind, path, ("named by MLproject" if kind in ("conda", "python_env") and (
        "conda_env" in data or "python_env" in data) else f"the first of {ENV_ORDER} present")


def _pylock_file(codeset: Path) -> Path | None:
    """pylock.toml, else the one pylock.<name>.toml; several named ones: an error."""
    path = _default_file(codeset, PYLOCK_FILE)
    if path is not None:
        return path
    named = sorted(entry.name for entry in codeset.iterdir()
                   if entry.name.startswith("pylock.") and entry.name.endswith(".toml")
                   and entry.name.count(".") == 2)
    if len(named) > 1:
        raise StepError(f"several PEP 751 locks ({', '.join(named[:4])}); keep one, or add "
                        f"the one to build as {PYLOCK_FILE}", source=named[0])
    return _default_file(codeset, named[0]) if named else None


def _declared_or_default(codeset: Path, data: dict[str, Any]) -> tuple[str, Path | None]:
    for field, kind in (("conda_env", "conda"), ("python_env", "python_env")):
        if field in data:
            value = data[field]
            if not isinstance(value, str):
                raise StepError(f"expected a file path, got {describe(value)}",
                                source=MLPROJECT, field=field)
            path = resolve_inside(codeset, codeset, value, source=MLPROJECT, field=field)
            if not _present(path) or path.is_dir():
                raise StepError(f"{quoted(value)} not found in the codeset", source=MLPROJECT,
                                field=field)
            return kind, path
    for name, kind in ((CONDA_FILE, "conda"), (PYTHON_ENV_FILE, "python_env"),
                       (REQUIREMENTS_FILE, "requirements")):
        path = _default_file(codeset, name)
        if path is not None:
            return kind, path
    if "docker_env" in data:
        return "none", None
    raise StepError(
        f"no environment: add {CONDA_FILE}, {PYTHON_ENV_FILE}, {REQUIREMENTS_FILE}, "
        f"{PYLOCK_FILE}, {UV_LOCK_FILE}, {PIXI_LOCK_FILE} or {CONDA_LOCK_FILE}, or declare "
        f"conda_env/python_env/docker_env",
        source=MLPROJECT,
    )


def _default_file(codeset: Path, name: str) -> Path | None:
    """``codeset/name`` when present; a broken symlink there is an error, not an absence."""
    entry = codeset / name
    if not _present(entry):
        return None
    problem = broken_link(entry)
    if problem:
        raise StepError(problem, source=name)
    if entry.is_dir():
        return None
    return resolve_inside(codeset, codeset, name, source=name, field=None)


def _parameter(name: str, spec: str | dict[str, Any]) -> Parameter:
    ptype, default = _parameter_spec(spec, name)
    return Parameter(name, ptype, default)


def load_project(codeset: Path) -> Project:
    """Validate MLproject and pick the environment file, without importing MLflow (the
    builder's skip path stays fast); the runtime step also runs MLflow's own loader."""
    path = find_mlproject(codeset)
    data = load_yaml_mapping(codeset, path)
    _check_shape(data)
    env_kind, env_file, env_reason = _select_env(codeset, data)
    python_env_file = None
    if env_kind in ("pylock", "uv-lock") and isinstance(data.get("python_env"), str):
        python_env_file = _declared_or_default(codeset, data)[1]
    entry_points = {
        name: EntryPoint(name, spec["command"], tuple(
            _parameter(pname, pspec)
            for pname, pspec in (spec.get("parameters") or {}).items()))
        for name, spec in data["entry_points"].items()
    }
    name = data.get("name")
    docker_image = (data.get("docker_env") or {}).get("image")
    return Project(str(name) if name is not None else None, entry_points, env_kind, env_file,
                   docker_image, env_reason, python_env_file)
