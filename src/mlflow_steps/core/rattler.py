"""py-rattler, always in a child process (``mlflow_steps.core.rattler_child``, which may abort
while it finalises): its answer, or one redacted line."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact

TIMEOUT_SECONDS = 600.0


def run_rattler(command: str, payload: dict[str, Any], *, source: str,
                secrets: Sequence[str] = (), action: str | None = None) -> Any:
    """Run ``command`` of the child with ``payload``; its error becomes one line naming
    ``source`` and the work (``action``, else "conda ``command``")."""
    action = action or f"conda {command}"
    try:
        done = interrupt.run([sys.executable, "-m", "mlflow_steps.core.rattler_child"],
                             input=json.dumps({"command": command, **payload}), text=True,
                             timeout=TIMEOUT_SECONDS)
    except subprocess.TimeoutExpired:
        raise StepError(f"{action} did not finish within {TIMEOUT_SECONDS:.0f} s",
                        source=source) from None
    try:
        answer = json.loads(done.stdout)
    except ValueError:
        last = (done.stderr.strip().splitlines() or [f"exit status {done.returncode}"])[-1]
        raise StepError(f"{action} failed: {redact(last, list(secrets))}",
                        source=source) from None
    if "error" in answer:
        raise StepError(f"{action} failed: {redact(answer['error'], list(secrets))}",
                        source=source)
    return answer["result"]
