"""The tracking server connection: URI from the environment, a bounded reachability check."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from pathlib import Path

from mlflow_steps.envspec import strip_credentials
from mlflow_steps.errors import StepError

# How hard the pre-flight check tries before the step gives up (MLflow's own defaults wait
# minutes): ~1+2+4 s of backoff, 20 s per request.
PREFLIGHT_HTTP = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
                  "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
                  "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"
SECRET_VARIABLES = ("MLFLOW_TRACKING_PASSWORD", "MLFLOW_TRACKING_TOKEN",
                    "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN")


def tracking_uri(environ: dict[str, str], codeset: Path) -> str:
    """MLFLOW_TRACKING_URI, or a local file store in the codeset (with a warning).

    For the fallback, ``environ`` gets MLFLOW_ALLOW_FILE_STORE=true: MLflow 3 keeps the
    file store in maintenance mode behind that switch, and the runtime image carries no
    SQL driver for a local sqlite store.
    """
    uri = environ.get("MLFLOW_TRACKING_URI", "").strip()
    if uri:
        return uri
    uri = (codeset.resolve() / "mlruns").as_uri()
    environ["MLFLOW_TRACKING_URI"] = uri
    environ.setdefault(FILE_STORE_SWITCH, "true")
    os.environ.setdefault(FILE_STORE_SWITCH, environ[FILE_STORE_SWITCH])
    print(f"mlflow-steps: warning: MLFLOW_TRACKING_URI is not set; runs go to the local "
          f"store {uri}", file=sys.stderr)
    return uri


def redact(uri: str) -> str:
    """The URI as it may appear in messages: no user:password."""
    return strip_credentials(uri)


def secret_values(environ: dict[str, str]) -> list[str]:
    """Values that must never be printed (credentials from the environment)."""
    values = [environ.get(name, "") for name in SECRET_VARIABLES]
    return [value for value in values if len(value) >= 4]


@contextlib.contextmanager
def bounded_retries() -> Iterator[None]:
    """Fewer, shorter HTTP retries for the duration (unless the user chose their own)."""
    added = {k: v for k, v in PREFLIGHT_HTTP.items() if k not in os.environ}
    os.environ.update(added)
    try:
        yield
    finally:
        for key in added:
            os.environ.pop(key, None)


def scrub(text: str, uri: str, environ: dict[str, str]) -> str:
    """``text`` with the tracking URI's credentials and every secret value masked."""
    text = text.replace(uri, redact(uri))
    for value in secret_values(environ):
        text = text.replace(value, "***")
    return text


def check_reachable(client, uri: str) -> None:
    """Fail within bounded time, naming the server, when the tracking store does not answer."""
    from mlflow.exceptions import MlflowException

    with bounded_retries():
        try:
            client.search_experiments(max_results=1)
        except MlflowException as exc:
            reason = scrub(str(exc.message).splitlines()[0][:300], uri, dict(os.environ))
            raise StepError(f"tracking server {redact(uri)} did not answer: {reason}",
                            source="MLFLOW_TRACKING_URI") from None
        except OSError as exc:
            reason = scrub(str(exc), uri, dict(os.environ))
            raise StepError(f"tracking server {redact(uri)} unreachable: {reason}",
                            source="MLFLOW_TRACKING_URI") from None


def mlflow_error_line(exc: Exception) -> str:
    """An MLflow exception as one line, credentials masked."""
    message = str(getattr(exc, "message", exc)).strip().splitlines()
    environ = dict(os.environ)
    return scrub(message[0] if message else type(exc).__name__,
                 environ.get("MLFLOW_TRACKING_URI", "") or "\0", environ)
