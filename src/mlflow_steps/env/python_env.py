"""MLflow python_env.yaml files."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.core.bounded import quoted, relative_name
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.yaml_file import (
    describe,
    load_yaml_mapping,
    require_str_list,
    written_text,
)
from mlflow_steps.env.requirements import RequirementsParser, yaml_lines

_PYTHON_VERSION = re.compile(r"^(\d+)\.(\d+)(\.\d+)?$")


@dataclass
class PythonEnv:
    """python version plus build and runtime pip requirements."""

    python: str
    build: RequirementsParser
    runtime: RequirementsParser

    def python_minor(self) -> str:
        """The 'X.Y' of the python version."""
        return ".".join(self.python.split(".")[:2])


def parse_python_env(codeset: Path, path: Path) -> PythonEnv:
    """Parse python_env.yaml: python (required), build_dependencies, dependencies."""
    name = relative_name(codeset, path)
    data = load_yaml_mapping(codeset, path)
    raw = data.get("python", "")
    text = written_text(raw)
    if text is not None:  # `python: 3.10` is the number 3.1 to YAML
        raise StepError(f"python: {text} was read as the number {raw!r}; quote it: "
                        f"python: \"{text}\"", source=name)
    if isinstance(raw, bool) or not isinstance(raw, str | int | float):
        raise StepError(f"expected a version like '3.11' or '3.11.7', got {describe(raw)}",
                        source=name, field="python")
    python = str(raw).strip()
    if not _PYTHON_VERSION.match(python):
        raise StepError(f"expected a version like '3.11' or '3.11.7', got {quoted(python, 40)}",
                        source=name, field="python")
    env = PythonEnv(python, RequirementsParser(codeset), RequirementsParser(codeset))
    for key, parser in (("build_dependencies", env.build), ("dependencies", env.runtime)):
        lines = require_str_list(data.get(key) or [], source=name, field=key)
        parser.parse_lines(yaml_lines(lines, key), path.parent, source=name)
    return env
