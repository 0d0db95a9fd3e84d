"""The tracking server connection: URI from the environment, a pre-flight check and MLflow's
own HTTP retries, all bounded by the network budget (MLFLOW_STEPS_NETWORK_TIMEOUT): each
request in total, a server trickling its answer included; a refused connection fails within
about a second (retry.REFUSED_RETRIES)."""

from __future__ import annotations

import contextlib
import email.utils
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any, TypeVar

from mlflow_steps.core import mlflow_compat
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import Redactor, secret_values
from mlflow_steps.core.retry import BUDGET_VARIABLE, REFUSED_RETRIES, is_refused, network_budget

FILE_STORE_SWITCH = "MLFLOW_ALLOW_FILE_STORE"
SOURCE = "MLFLOW_TRACKING_URI"
PROBE_ENDPOINT = "/api/2.0/mlflow/experiments/search"
RETRYABLE_STATUS = frozenset({408, 429, 500, 502, 503, 504})

TIMEOUT = "MLFLOW_HTTP_REQUEST_TIMEOUT"
MAX_RETRIES = "MLFLOW_HTTP_REQUEST_MAX_RETRIES"
BACKOFF_FACTOR = "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"
BACKOFF_JITTER = "MLFLOW_HTTP_REQUEST_BACKOFF_JITTER"
RESPECT_RETRY_AFTER = "MLFLOW_HTTP_RESPECT_RETRY_AFTER_HEADER"

T = TypeVar("T")


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


def redactor(environ: Mapping[str, str]) -> Redactor:
    """Masks the environment's credentials (and any URL user-info) in what we print."""
    return Redactor(secret_values(environ))


# --- MLflow's own HTTP retries ---------------------------------------------------------------

def http_settings(budget: float) -> dict[str, str]:
    """MLflow HTTP settings whose worst case for one call fits in ``budget`` seconds.

    Worst case = attempts x timeout + backoff; urllib3 sleeps nothing before the first retry
    and factor x 2^(n-1) before the n-th. Retry-After is not followed by MLflow's retries
    (urllib3 would sleep for whatever the server asks, up to 6 hours); 429s are still
    retried with the backoff.
    """
    retries = 2 if budget >= 6 else 1 if budget >= 2 else 0
    factor = 1 if budget >= 15 else 0
    backoff = sum(factor * 2 ** (n - 1) for n in range(2, retries + 1))
    timeout = max(1, int((budget - backoff) / (retries + 1)))
    return {TIMEOUT: str(timeout), MAX_RETRIES: str(retries), BACKOFF_FACTOR: str(factor),
            BACKOFF_JITTER: "0", RESPECT_RETRY_AFTER: "false"}


@contextlib.contextmanager
def bounded_http(environ: Mapping[str, str]) -> Iterator[dict[str, str]]:
    """MLflow's HTTP settings derived from the budget, for this process for the duration;
    yields them for the project's process. Settings the user gave are left alone. In this
    process each of MLflow's requests is also bounded in total by the budget."""
    budget = network_budget(environ)
    added = {key: value for key, value in http_settings(budget).items() if key not in environ}
    with process_environment(added), mlflow_compat.bounded_requests(budget):
        yield added


@contextlib.contextmanager
def process_environment(values: Mapping[str, str]) -> Iterator[None]:
    """``values`` in this process's environment for the duration (what was there after)."""
    previous = {key: os.environ.get(key) for key in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


# --- The pre-flight check --------------------------------------------------------------------

class _NoAnswer(Exception):
    """The call did not finish before the deadline."""


def _before(deadline: float, call: Callable[[], T]) -> T:
    """``call()``'s result, or _NoAnswer at ``deadline`` (DNS, a trickling server, ...: no
    socket timeout covers everything). The abandoned call ends with the process."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["value"] = call()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="tracking-preflight", daemon=True)
    thread.start()
    thread.join(max(0.0, deadline - time.monotonic()))
    if thread.is_alive():
        raise _NoAnswer
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def retry_after_seconds(value: str | None) -> float | None:
    """A Retry-After header (seconds or an HTTP date) as seconds from now; None if absent."""
    value = (value or "").strip()
    if not value:
        return None
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _transient(exc: BaseException) -> bool:
    """A connection failure or timeout (worth another try), not a malformed URL or TLS."""
    import requests  # requests comes with MLflow, loaded only to talk to it

    cause = exc.__cause__ or exc.__context__
    return isinstance(cause, requests.ConnectionError | requests.Timeout) and not isinstance(
        cause, requests.exceptions.SSLError | requests.exceptions.InvalidURL)


def _reason(exc: BaseException) -> str:
    """A connection failure in a few words: 'Connection refused', 'no answer', ..."""
    import requests  # requests comes with MLflow, loaded only to talk to it

    cause = exc.__cause__ or exc.__context__
    text = str(getattr(exc, "message", None) or exc)
    if isinstance(cause, requests.Timeout) or "timed out" in text.lower():
        return "no answer"
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", text)
    return errno.group(1).strip() if errno else (text.splitlines() or ["no answer"])[0][:300]


def check_reachable(client, uri: str, environ: Mapping[str, str]) -> None:
    """Return once the tracking store answers; else one line naming it, within the budget.

    Connection failures, timeouts and 408/429/5xx are retried with backoff until the
    budget is spent, a refused connection only REFUSED_RETRIES times (nothing listens
    there); a Retry-After is waited for when it fits in what is left.
    """
    budget = network_budget(environ)
    deadline = time.monotonic() + budget
    mask = redactor(environ)
    shown = mask(uri)
    if not uri.lower().startswith(("http://", "https://")):
        _check_store(client, shown, mask, deadline, budget)
        return
    from mlflow.exceptions import MlflowException  # MLflow loads only when a step talks to it


    delay, last, refused = 0.5, "no answer", 0
    while (remaining := deadline - time.monotonic()) > 0:
        try:
            response = _before(deadline, lambda: mlflow_compat.tracking_request(
                uri, PROBE_ENDPOINT, "POST", timeout=remaining, json={"max_results": 1}))
        except _NoAnswer:
            break
        except MlflowException as exc:
            if not _transient(exc):
                raise StepError(f"tracking server {shown}: {mask(_reason(exc))}",
                                source=SOURCE) from None
            last, wait = mask(_reason(exc)), delay
            refused += is_refused(exc)
            if refused > REFUSED_RETRIES:
                raise StepError(f"tracking server {shown}: {last} ({refused} attempts): check "
                                "the URL and that the server is up", source=SOURCE) from None
        else:
            if response.status_code == 200:
                _check_answer(response, shown)
                return
            if response.status_code not in RETRYABLE_STATUS:
                raise StepError(_refusal(response, shown, mask), source=SOURCE)
            last = f"HTTP {response.status_code}"
            wait = retry_after_seconds(response.headers.get("Retry-After"))
            if wait is not None and time.monotonic() + wait > deadline:
                raise StepError(
                    f"tracking server {shown} answered HTTP {response.status_code} and asks to "
                    f"retry after {wait:g} s, more than the {budget:g} s network budget: retry "
                    f"later or raise {BUDGET_VARIABLE}", source=SOURCE)
            wait = delay if wait is None else wait
        time.sleep(max(0.0, min(wait, deadline - time.monotonic())))
        delay = min(delay * 2, 8.0)
    raise StepError(f"tracking server {shown} did not answer within {budget:g} s "
                    f"({BUDGET_VARIABLE} sets the budget)"
                    + ("" if last == "no answer" else f": {last}"), source=SOURCE)


def _check_answer(response, shown: str) -> None:
    try:
        body = response.json()
    except ValueError:
        body = None
    if not isinstance(body, dict):
        kind = response.headers.get("Content-Type", "no content type").split(";")[0]
        raise StepError(f"{shown} answered, but not as an MLflow tracking server ({kind} "
                        f"from {PROBE_ENDPOINT}): check the URL", source=SOURCE)


def _refusal(response, shown: str, mask: Redactor) -> str:
    status = response.status_code
    if status in (401, 403):
        return (f"tracking server {shown} refused the request (HTTP {status}): set "
                "MLFLOW_TRACKING_TOKEN, or MLFLOW_TRACKING_USERNAME and _PASSWORD")
    try:
        detail = str(response.json().get("message", ""))
    except (ValueError, AttributeError):
        detail = response.text
    detail = (detail.strip().splitlines() or [""])[0][:300]
    return f"tracking server {shown} answered HTTP {status}" + (
        f": {mask(detail)}" if detail else "")


def _check_store(client, shown: str, mask: Redactor, deadline: float, budget: float) -> None:
    """A store MLflow reaches without HTTP (file, sqlite, databricks, ...): one search."""
    from mlflow.exceptions import MlflowException  # MLflow loads only when a step talks to it

    try:
        _before(deadline, lambda: client.search_experiments(max_results=1))
    except _NoAnswer:
        raise StepError(f"tracking store {shown} did not answer within {budget:g} s "
                        f"({BUDGET_VARIABLE} sets the budget)", source=SOURCE) from None
    except MlflowException as exc:
        raise StepError(f"tracking store {shown} did not answer: "
                        f"{mask(_first_line(exc))}", source=SOURCE) from None
    except OSError as exc:
        raise StepError(f"tracking store {shown} unreachable: {mask(exc)}",
                        source=SOURCE) from None


def _first_line(exc: BaseException) -> str:
    message = str(getattr(exc, "message", None) or exc).strip().splitlines()
    return message[0][:300] if message else type(exc).__name__


_FAILED_REQUEST = re.compile(r"API request to (?P<url>\S+) failed with (?:timeout )?exception")
_CAUSE = re.compile(r"Caused by (?P<kind>\w+)\((?P<detail>.*)")


def condense(message: str) -> str:
    """MLflow's "API request to U failed with exception <urllib3 repr>" as a short reason."""
    request = _FAILED_REQUEST.match(message)
    if not request:
        return message
    url = request["url"].split("?")[0]
    cause = _CAUSE.search(message)
    kind = cause["kind"] if cause else ""
    errno = re.search(r"\[Errno -?\d+\] ([^'\")\]]+)", message)
    if "Timeout" in kind or "timed out" in message.lower():
        seconds = re.search(r"timeout=(\d+(?:\.\d+)?)", message)
        reason = (f"no answer{f' within {seconds[1]} s' if seconds else ''}, retries included "
                  f"({BUDGET_VARIABLE}, or {TIMEOUT} and {MAX_RETRIES} when set)")
    elif errno:
        reason = errno.group(1).strip()
    elif kind == "ResponseError":
        reason = re.match(r"['\"]?([^'\"]*)", cause["detail"])[1]
    else:
        reason = kind or message[request.end():].strip()[:200]
    return f"API request to {url} failed: {reason}"


def mlflow_error_line(exc: Exception) -> str:
    """An MLflow exception as one line, credentials masked."""
    message = str(getattr(exc, "message", None) or exc).strip().splitlines()
    line = condense(message[0]) if message else type(exc).__name__
    return redactor(os.environ)(line[:500])
