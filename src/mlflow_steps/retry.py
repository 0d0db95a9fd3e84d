"""The one retry policy: how long any wait on a server (registry, tracking server) may last."""

from __future__ import annotations

import os
from collections.abc import Mapping

from mlflow_steps.errors import StepError

BUDGET_VARIABLE = "MLFLOW_STEPS_NETWORK_TIMEOUT"
DEFAULT_BUDGET_SECONDS = 30.0


def network_budget(environ: Mapping[str, str] | None = None) -> float:
    """Total seconds a "server does not answer" may take, retries included."""
    raw = (os.environ if environ is None else environ).get(BUDGET_VARIABLE, "").strip()
    if not raw:
        return DEFAULT_BUDGET_SECONDS
    try:
        budget = float(raw)
    except ValueError:
        budget = -1.0
    if not 0 < budget <= 3600:
        raise StepError(f"'{raw}' is not a number of seconds between 0 and 3600",
                        source=BUDGET_VARIABLE)
    return budget
