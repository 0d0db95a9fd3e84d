"""Step outputs: Tekton results (FuseML's TASK_RESULT convention) or explicit files."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

RESULTS_DIR_ENV = "MLFLOW_STEPS_RESULTS_DIR"
DEFAULT_RESULTS_DIR = "/tekton/results"


def result_path(environ: dict[str, str], variable: str) -> Path | None:
    """Where the result named by env ``variable`` (e.g. TASK_RESULT) goes, if declared."""
    name = environ.get(variable, "").strip()
    if not name:
        return None
    return Path(environ.get(RESULTS_DIR_ENV, DEFAULT_RESULTS_DIR)) / name


def write_atomically(path: Path, value: str) -> None:
    """Write ``value`` so readers never see a partial file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(value)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_outputs(outputs: dict[Path, str]) -> None:
    """Write every output only once all values are known (the step has succeeded): all of
    them, or (failed or interrupted on the way) none."""
    written: list[Path] = []
    try:
        for path, value in outputs.items():
            write_atomically(path, value)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
