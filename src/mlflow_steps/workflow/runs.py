"""Run records: one JSON file per local run (inputs, step images, outputs, timings, status)."""

from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from mlflow_steps.stepio import write_atomically

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
    def from_json(cls, data: dict) -> RunRecord:
        steps = [StepRecord(**step) for step in data.pop("steps")]
        return cls(steps=steps, **data)


class RunStore:
    """Records under ``root/<run id>/run.json``; each save replaces the file atomically."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def directory(self, record: RunRecord) -> Path:
        return self.root / record.id

    def save(self, record: RunRecord) -> None:
        write_atomically(self.directory(record) / RECORD_FILE,
                         json.dumps(asdict(record), indent=2, sort_keys=True) + "\n")

    def list(self) -> list[RunRecord]:
        """Every readable record, oldest first."""
        records = []
        for path in self.root.glob(f"*/{RECORD_FILE}") if self.root.is_dir() else ():
            try:
                records.append(RunRecord.from_json(json.loads(path.read_text())))
            except (OSError, ValueError, TypeError, KeyError):
                continue
        return sorted(records, key=lambda record: record.started)
