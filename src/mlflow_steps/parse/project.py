"""MLproject: shape checks and the fields the steps need (no MLflow import)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlflow_steps.codeset_files import resolve_inside
from mlflow_steps.errors import StepError
from mlflow_steps.parse.yaml_file import load_yaml_mapping

MLPROJECT = "MLproject"
CONDA_LOCK_FILE = "conda-lock.yml"
CONDA_FILE = "conda.yaml"
PYTHON_ENV_FILE = "python_env.yaml"
REQUIREMENTS_FILE = "requirements.txt"
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
    env_kind: str  # conda-lock | conda | python_env | requirements | none
    env_file: Path | None
    docker_image: str | None


def find_mlproject(codeset: Path) -> Path:
    """The MLproject file (MLflow matches the name case-insensitively)."""
    if not codeset.is_dir():
        raise StepError("codeset directory not found", source=str(codeset))
    for entry in sorted(codeset.iterdir()):
        if entry.name.lower() == MLPROJECT.lower() and entry.is_file():
            return entry
    raise StepError("no MLproject file in the codeset; add one with a 'main' entry point",
                    source=f"{codeset.name}/{MLPROJECT}")


def _check_shape(data: dict[str, Any]) -> None:
    present = [name for name in ENV_FIELDS if name in data]
    if len(present) > 1:
        raise StepError(f"declares both {present[0]} and {present[1]}; keep exactly one",
                        source=MLPROJECT, field=present[1])
    entry_points = data.get("entry_points")
    if not isinstance(entry_points, dict):
        raise StepError("missing 'entry_points' mapping", source=MLPROJECT, field="entry_points")
    if "main" not in entry_points:
        raise StepError("no 'main' entry point", source=MLPROJECT, field="entry_points.main")
    for name, spec in entry_points.items():
        where = f"entry_points.{name}"
        if not isinstance(spec, dict) or not isinstance(spec.get("command"), str):
            raise StepError("expected a mapping with a 'command' string", source=MLPROJECT,
                            field=where)
        params = spec.get("parameters") or {}
        if not isinstance(params, dict):
            raise StepError("expected a mapping", source=MLPROJECT, field=f"{where}.parameters")
        for pname, pspec in params.items():
            ptype = pspec if isinstance(pspec, str) else (pspec or {}).get("type", "string")
            if not isinstance(pspec, str | dict) or ptype not in PARAMETER_TYPES:
                raise StepError(f"type must be one of {sorted(PARAMETER_TYPES)}",
                                source=MLPROJECT, field=f"{where}.parameters.{pname}")
    docker_env = data.get("docker_env")
    if docker_env is not None and not (
        isinstance(docker_env, dict) and isinstance(docker_env.get("image"), str)
    ):
        raise StepError("expected a mapping with an 'image' string", source=MLPROJECT,
                        field="docker_env.image")


def _select_env(codeset: Path, data: dict[str, Any]) -> tuple[str, Path | None]:
    """Environment precedence: lockfile, conda, python_env, requirements.txt."""
    lock = codeset / CONDA_LOCK_FILE
    if lock.is_file():
        return "conda-lock", lock
    for field, kind in (("conda_env", "conda"), ("python_env", "python_env")):
        if field in data:
            value = data[field]
            if not isinstance(value, str):
                raise StepError("expected a file path", source=MLPROJECT, field=field)
            path = resolve_inside(codeset, codeset, value, source=MLPROJECT, field=field)
            if not path.is_file():
                raise StepError(f"'{value}' not found in the codeset", source=MLPROJECT,
                                field=field)
            return kind, path
    for name, kind in ((CONDA_FILE, "conda"), (PYTHON_ENV_FILE, "python_env"),
                       (REQUIREMENTS_FILE, "requirements")):
        if (codeset / name).is_file():
            return kind, resolve_inside(codeset, codeset, name, source=name, field=None)
    if "docker_env" in data:
        return "none", None
    raise StepError(
        f"no environment: add {CONDA_FILE}, {PYTHON_ENV_FILE}, {REQUIREMENTS_FILE} or "
        f"{CONDA_LOCK_FILE}, or declare conda_env/python_env/docker_env",
        source=MLPROJECT,
    )


def _parameter(name: str, spec: str | dict[str, Any] | None) -> Parameter:
    if isinstance(spec, str):
        return Parameter(name, spec, None)
    spec = spec or {}
    return Parameter(name, spec.get("type", "string"), spec.get("default"))


def load_project(codeset: Path) -> Project:
    """Validate MLproject and pick the environment file, without importing MLflow (the
    builder's skip path stays fast); the runtime step also runs MLflow's own loader."""
    path = find_mlproject(codeset)
    data = load_yaml_mapping(codeset, path)
    _check_shape(data)
    env_kind, env_file = _select_env(codeset, data)
    entry_points = {
        str(name): EntryPoint(str(name), spec["command"], tuple(
            _parameter(str(pname), pspec)
            for pname, pspec in (spec.get("parameters") or {}).items()))
        for name, spec in data["entry_points"].items()
    }
    name = data.get("name")
    docker_image = (data.get("docker_env") or {}).get("image")
    return Project(str(name) if name is not None else None, entry_points, env_kind, env_file,
                   docker_image)
