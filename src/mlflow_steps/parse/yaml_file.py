"""Load a codeset YAML file into a mapping, with one-line errors."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlflow_steps.codeset_files import read_env_text, relative_name
from mlflow_steps.errors import StepError


def load_yaml_mapping(codeset: Path, path: Path) -> dict[str, Any]:
    """Parse ``path`` as YAML and require a mapping at the top level."""
    name = relative_name(codeset, path)
    text = read_env_text(codeset, path)
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or "invalid syntax"
        raise StepError(f"malformed YAML{where}: {problem}", source=name) from None
    if not isinstance(data, dict):
        kind = "empty" if data is None else type(data).__name__
        raise StepError(f"expected a YAML mapping at the top level, got {kind}", source=name)
    return data


def require_str_list(value: Any, *, source: str, field: str) -> list[str]:
    """Validate a YAML list of strings."""
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise StepError("expected a list of strings", source=source, field=field)
    return value
