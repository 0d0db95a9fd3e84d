"""Helpers shared by test modules (importable as `helpers`)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "sklearn-logreg"
MINIMAL_MLPROJECT = "name: demo\nentry_points:\n  main:\n    command: python train.py\n"


def write_codeset(root: Path, files: dict[str, str | bytes]) -> Path:
    """Create a codeset from {relative path: content}."""
    root.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            path.write_text(content)
    return root


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real `mlflow-steps` console entry in a subprocess."""
    return subprocess.run(
        [sys.executable, "-m", "mlflow_steps", *args],
        capture_output=True, text=True, env=env, timeout=120, check=False,
    )
