"""Run records: one JSON file per local run (inputs, step images, outputs, timings, status)."""

from __future__ import annotations

import json
import os
import secrets
import sys
import time
from collections.abc import Callable
from dataclasses import MISSING, asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.stepio import write_atomically

RUNS_DIR_ENV = "MLFLOW_STEPS_RUNS_DIR"
RECORD_FILE = "run.json"


def default_runs_dir() -> Path:
    """$MLFLOW_STEPS_RUNS_DIR, else $XDG_DATA_HOME (~/.local/share)/mlflow-steps/runs."""
    if os.environ.get(RUNS_DIR_ENV):
        return Path(os.environ[RUNS_DIR_ENV])
    data = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(data) / "mlflow-steps" / "runs"


@dataclass
class StepRecord:
    name: str
    image: str = ""
    status: str = "pending"
    seconds: float = 0.0
    exit_code: int | None = None
    build_skipped: bool = False
    outputs: dict[str, str] = field(default_factory=dict)


@dataclass
class RunRecord:
    id: str
    workflow: str
    file: str
    started: float
    inputs: dict[str, str]
    steps: list[StepRecord]
    status: str = "running"
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    error: str = ""

    @classmethod
    def new(cls, workflow: str, file: str, inputs: dict[str, str], steps: list[str]
            ) -> RunRecord:
        started = time.time()
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(started))
        return cls(f"{workflow}-{stamp}-{secrets.token_hex(3)}", workflow, file, started,
                   inputs, [StepRecord(name) for name in steps])

    @classmethod
    def from_json(cls, data: object, source: str = "run record") -> RunRecord:
        """A record from its JSON form; a StepError naming ``source`` and the field (a null,
        a wrong type, a missing field) instead of a record that breaks its readers."""
        values = _checked(cls, data, source, "")
        values["steps"] = [StepRecord(**_checked(StepRecord, step, source, f"steps[{i}]."))
                           for i, step in enumerate(_list(values["steps"], source, "steps"))]
        return cls(**values)


# What each field may hold in the JSON (bool is not a number here, though Python says so).
_NUMBER = (int, float)
_TYPES: dict[str, tuple[type, ...]] = {
    "id": (str,), "workflow": (str,), "file": (str,), "started": _NUMBER, "inputs": (dict,),
    "steps": (list,), "status": (str,), "seconds": _NUMBER, "outputs": (dict,),
    "error": (str,), "name": (str,), "image": (str,), "exit_code": (int,),
    "build_skipped": (bool,),
}
_NULLABLE = {"exit_code"}
_KIND = {str: "a string", dict: "an object", list: "a list", bool: "true or false",
         int: "an integer", float: "a number"}


def _list(value: object, source: str, where: str) -> list:
    if not isinstance(value, list):
        raise StepError(f"is {_describe(value)}, expected a list", source=source, field=where)
    return value


def _describe(value: object) -> str:
    return "null" if value is None else f"{type(value).__name__} {json.dumps(value)[:40]}"


def _checked(kind: type, data: object, source: str, prefix: str) -> dict[str, Any]:
    """``data``'s fields for ``kind``, each of its JSON type; unknown fields are ignored."""
    if not isinstance(data, dict):
        raise StepError(f"is {_describe(data)}, expected an object", source=source,
                        field=prefix.rstrip(".") or None)
    values: dict[str, Any] = {}
    for spec in fields(kind):
        name = spec.name
        where = prefix + name
        if name not in data:
            if spec.default is MISSING and spec.default_factory is MISSING:
                raise StepError("is missing", source=source, field=where)
            continue
        value = data[name]
        allowed = _TYPES[name]
        ok = (value is None and name in _NULLABLE) or (
            isinstance(value, allowed) and not (isinstance(value, bool) and bool not in allowed))
        if not ok:
            expected = " or ".join(_KIND[t] for t in allowed)
            raise StepError(f"is {_describe(value)}, expected {expected}", source=source,
                            field=where)
        if isinstance(value, dict):
            for key, item in value.items():
                if not isinstance(item, str):
                    raise StepError(f"is {_describe(item)}, expected a string",
                                    source=source, field=f"{where}.{key}")
        values[name] = value
    return values


class RunStore:
    """Records under ``root/<run id>/run.json``; each save replaces the file atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, record: RunRecord) -> Path:
        return self.root / record.id

    def save(self, record: RunRecord) -> None:
        write_atomically(self.directory(record) / RECORD_FILE,
                         json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")

    def load(self, path: Path) -> RunRecord:
        """The record in ``path``; a StepError naming the file (and field) when unreadable."""
        try:
            text = path.read_text()
        except OSError as exc:
            raise StepError(f"cannot read: {exc.strerror or exc}", source=str(path)) from None
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise StepError(f"is not JSON ({exc})", source=str(path)) from None
        return RunRecord.from_json(data, str(path))

    def list(self, warn: Callable[[str], None] | None = None) -> list[RunRecord]:
        """Every readable record, oldest first; each unreadable one is skipped with one line
        (to stderr unless ``warn`` is given) naming its file and field."""
        warn = warn or (lambda line: print(f"mlflow-steps: warning: {line}", file=sys.stderr))
        records = []
        for path in sorted(self.root.glob(f"*/{RECORD_FILE}")) if self.root.is_dir() else ():
            try:
                records.append(self.load(path))
            except StepError as exc:
                warn(f"{exc}; record skipped")
        return sorted(records, key=lambda record: record.started)
