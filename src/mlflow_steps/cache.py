"""Where mlflow-steps keeps what it reuses between builds (conda archives, rewritten layers)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path


def cache_root(environ: Mapping[str, str]) -> Path:
    """$MLFLOW_STEPS_CACHE, else $XDG_CACHE_HOME/mlflow-steps, else ~/.cache/mlflow-steps."""
    return Path(environ.get("MLFLOW_STEPS_CACHE") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME", "/tmp"), ".cache"),
        "mlflow-steps"))
