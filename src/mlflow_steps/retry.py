"""The one retry policy: how long any wait on a server (registry, tracking server) may last.

``network_budget`` is the total time one logical operation may wait on a server that does
not answer, retries included (MLFLOW_STEPS_NETWORK_TIMEOUT, default 30 s).

HTTP clients share one retry policy: ``retrying_session()`` is a requests session whose
adapter retries with urllib3's ``Retry`` (refused or reset connections, timeouts, 5xx and
429 with ``Retry-After`` honoured, exponential backoff; TLS failures are not retried).
Pass ``Deadline(budget).timeout()`` as a request's ``timeout`` and that one deadline bounds
everything the request does: each attempt's connect and read timeouts are what is left of
it, a backoff or ``Retry-After`` wait that would overrun it ends the retries instead, and
redirects share it. Reuse one deadline for several requests of one logical operation (a
token fetch and the request it authorises)::

    session = retrying_session()
    deadline = Deadline(network_budget(environ))
    response = session.get(url, timeout=deadline.timeout())
"""

from __future__ import annotations

import os
import time
from collections.abc import Collection, Mapping
from contextvars import ContextVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import InvalidHeader, MaxRetryError, ResponseError
from urllib3.util import Retry, Timeout

from mlflow_steps.errors import StepError

BUDGET_VARIABLE = "MLFLOW_STEPS_NETWORK_TIMEOUT"
DEFAULT_BUDGET_SECONDS = 30.0
RETRIES = 4
BACKOFF = 0.5  # urllib3: no wait before the first retry, then 1, 2, 4 s ...
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS"})
_MIN_ATTEMPT = 0.05  # an attempt needs at least this much of the deadline to be worth making
_ACTIVE: ContextVar[Deadline | None] = ContextVar("mlflow_steps_deadline", default=None)


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


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` value (seconds or an HTTP date) asks for; None when absent
    or unparsable."""
    if not value:
        return None
    try:
        return Retry().parse_retry_after(value)
    except InvalidHeader:
        return None


class Deadline:
    """The end of one logical operation's network budget; counts the failed attempts."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.end = time.monotonic() + seconds
        self.failed_attempts = 0

    def remaining(self) -> float:
        return max(0.0, self.end - time.monotonic())

    @property
    def expired(self) -> bool:
        return self.remaining() <= 0

    def timeout(self) -> DeadlineTimeout:
        """The ``timeout=`` for a request of a ``retrying_session`` bounded by this deadline."""
        return DeadlineTimeout(self)


class DeadlineTimeout(Timeout):
    """A urllib3 timeout re-derived from a deadline at every attempt (urllib3 clones the
    timeout for each attempt, retries included): connect plus read never outlast it."""

    def __init__(self, deadline: Deadline) -> None:
        super().__init__(total=deadline.seconds)
        self.deadline = deadline

    def clone(self) -> Timeout:
        left = max(self.deadline.remaining(), 0.001)
        return Timeout(connect=left, read=left, total=left)


class BudgetRetry(Retry):
    """urllib3's Retry that also stops when the active deadline cannot afford the next
    wait (backoff or Retry-After) plus an attempt; an unparsable Retry-After means backoff."""

    def get_retry_after(self, response) -> float | None:  # type: ignore[no-untyped-def]
        try:
            return super().get_retry_after(response)
        except InvalidHeader:
            return None

    def next_wait(self, response=None) -> float:  # type: ignore[no-untyped-def]
        """What ``sleep(response)`` will wait before the next attempt."""
        if response is not None and self.respect_retry_after_header:
            after = self.get_retry_after(response)
            if after:
                return after
        return self.get_backoff_time()

    def increment(self, method=None, url=None, response=None, error=None,  # type: ignore[no-untyped-def]
                  _pool=None, _stacktrace=None) -> BudgetRetry:
        deadline = _ACTIVE.get()
        if deadline is not None:
            deadline.failed_attempts += 1
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if deadline is not None and new.next_wait(response) + _MIN_ATTEMPT > deadline.remaining():
            reason = error or ResponseError(
                f"the network budget ({deadline.seconds:g} s) is spent"
                if response is None else f"HTTP {response.status} and the budget is spent")
            raise MaxRetryError(_pool, url, reason) from reason  # type: ignore[arg-type]
        return new


class BudgetAdapter(HTTPAdapter):
    """An HTTPAdapter whose retries see the deadline of the request's ``DeadlineTimeout``."""

    def send(self, request, stream=False, timeout=None, verify=True, cert=None,  # type: ignore[no-untyped-def]
             proxies=None):
        token = _ACTIVE.set(getattr(timeout, "deadline", None))
        try:
            return super().send(request, stream=stream, timeout=timeout, verify=verify,
                                cert=cert, proxies=proxies)
        finally:
            _ACTIVE.reset(token)


def retry_policy(retries: int = RETRIES, backoff: float = BACKOFF,
                 methods: Collection[str] = IDEMPOTENT_METHODS) -> BudgetRetry:
    """The retry policy: ``retries`` more attempts after connection failures, timeouts and
    RETRY_STATUSES (429/503 wait Retry-After), ``backoff``·2^n s between them; TLS and other
    errors fail at once; the last 5xx/429 answer is returned, not raised."""
    return BudgetRetry(total=retries, connect=retries, read=retries, status=retries, other=0,
                       allowed_methods=frozenset(m.upper() for m in methods),
                       status_forcelist=RETRY_STATUSES, backoff_factor=backoff,
                       raise_on_status=False, respect_retry_after_header=True)


def retrying_session(retries: int = RETRIES, backoff: float = BACKOFF,
                     methods: Collection[str] = IDEMPOTENT_METHODS) -> requests.Session:
    """A requests session with ``retry_policy`` mounted for http:// and https://."""
    session = requests.Session()
    adapter = BudgetAdapter(max_retries=retry_policy(retries, backoff, methods))
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
