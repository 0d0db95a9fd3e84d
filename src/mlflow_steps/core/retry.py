"""The one retry policy: how long any wait on a server (registry, tracking server) may last.

``network_budget`` is the total time one logical operation may wait on a server that does
not answer, retries included (MLFLOW_STEPS_NETWORK_TIMEOUT, default 30 s).

HTTP clients share one retry policy: ``RetryingHttp`` sends requests over urllib3 pools with
urllib3's ``Retry`` (reset connections, timeouts, 5xx and 429 with ``Retry-After`` honoured,
exponential backoff; a refused connection is retried REFUSED_RETRIES times, about a second:
nothing listens there; TLS failures are not retried), with proxies
and the CA bundle taken from the environment as requests takes them. It is urllib3 alone,
not requests: the builder's skip decision pays for every module it imports. One
``Deadline`` bounds everything a request does: each attempt's connect and read timeouts are
what is left of it, a backoff or ``Retry-After`` wait that would overrun it ends the retries
instead, and redirects share it. The deadline is total, not per socket operation: every read
of a response (status line, headers, body, preloaded or streamed) and every send waits at most
what is left of it (``deadline``), so a server that trickles a byte a second cannot hold a
request past it.
Reuse one deadline for several requests of one logical operation (a token fetch and the
request it authorises)::

    http = RetryingHttp()
    deadline = Deadline(network_budget(environ))
    response = http.request("GET", url, deadline)
"""

from __future__ import annotations

import os
import threading
from collections.abc import Collection, Iterator, Mapping
from urllib.parse import unquote, urlencode, urlsplit

from urllib3 import BaseHTTPResponse, PoolManager, ProxyManager
from urllib3.exceptions import (
    ConnectTimeoutError,
    InvalidHeader,
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util import Retry, make_headers

from mlflow_steps.core.deadline import (
    ACTIVE,
    DEFAULT_BUDGET_SECONDS,
    POOL_CLASSES,
    Deadline,
    active,
)
from mlflow_steps.core.errors import StepError

BUDGET_VARIABLE = "MLFLOW_STEPS_NETWORK_TIMEOUT"
RETRIES = 4
REFUSED_RETRIES = 2  # a refused connection: nothing listens (a restart at most), ~1 s of retries
BACKOFF = 0.5  # urllib3: no wait before the first retry, then 1, 2, 4 s ...
MAX_REDIRECTS = 30  # as requests
POOL_SIZE = 10
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
IDEMPOTENT_METHODS = frozenset({"HEAD", "GET", "PUT", "DELETE", "OPTIONS"})
_MIN_ATTEMPT = 0.05  # an attempt needs at least this much of the deadline to be worth making


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


def causes(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it wraps (urllib3's ``reason``, ``args``, causes: the
    wrappers of urllib3, requests and MLflow)."""
    seen: set[int] = set()
    pending = [error]
    while pending:
        current = pending.pop(0)
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [getattr(current, "reason", None), *current.args, current.__cause__,
                  current.__context__]
        pending += [item for item in linked if isinstance(item, BaseException)]


def is_refused(error: BaseException | None) -> bool:
    """Whether ``error`` is, or wraps, a refused connection."""
    return error is not None and any(
        isinstance(cause, ConnectionRefusedError) for cause in causes(error))


def is_timeout(error: BaseException) -> bool:
    """Whether ``error`` is, or wraps, a timeout (a spent deadline included; a failed
    connect is not one, though urllib3 makes it a ConnectTimeoutError)."""
    return any(isinstance(cause, ReadTimeoutError | TimeoutError)
               or (isinstance(cause, ConnectTimeoutError)
                   and not isinstance(cause, NewConnectionError))
               for cause in causes(error))


def retry_after_seconds(value: str | None) -> float | None:
    """Seconds a ``Retry-After`` value (seconds or an HTTP date) asks for; None when absent
    or unparsable."""
    if not value:
        return None
    try:
        return Retry().parse_retry_after(value)
    except InvalidHeader:
        return None


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
        deadline = ACTIVE.get()
        if deadline is not None and not (response and response.get_redirect_location()):
            deadline.failed_attempts += 1
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        if is_refused(error) and sum(is_refused(h.error) for h in new.history) > REFUSED_RETRIES:
            raise MaxRetryError(_pool, url, error) from error  # type: ignore[arg-type]
        if deadline is not None and new.next_wait(response) + _MIN_ATTEMPT > deadline.remaining():
            reason = error or ResponseError(
                f"the network budget ({deadline.seconds:g} s) is spent"
                if response is None else f"HTTP {response.status} and the budget is spent")
            raise MaxRetryError(_pool, url, reason) from reason  # type: ignore[arg-type]
        return new


def retry_policy(retries: int = RETRIES, backoff: float = BACKOFF,
                 methods: Collection[str] = IDEMPOTENT_METHODS) -> BudgetRetry:
    """The retry policy: ``retries`` more attempts after connection failures, timeouts and
    RETRY_STATUSES (429/503 wait Retry-After), ``backoff``·2^n s between them; TLS and other
    errors fail at once; the last 5xx/429 answer is returned, not raised. Up to
    MAX_REDIRECTS redirects are followed; one to another host drops the Authorization."""
    return BudgetRetry(total=None, connect=retries, read=retries, status=retries, other=0,
                       redirect=MAX_REDIRECTS,
                       allowed_methods=frozenset(m.upper() for m in methods),
                       status_forcelist=RETRY_STATUSES, backoff_factor=backoff,
                       raise_on_status=False, respect_retry_after_header=True)


class RetryingHttp:
    """HTTP(S) under ``retry_policy``. Proxies: ``environ``'s <scheme>_proxy or all_proxy
    (either case) unless no_proxy names the host. Certificates are checked against
    ``verify`` (a CA file or directory); True means REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, else
    certifi's bundle (requests' order); False checks none."""

    def __init__(self, retries: int = RETRIES, backoff: float = BACKOFF,
                 methods: Collection[str] = IDEMPOTENT_METHODS, verify: bool | str = True,
                 environ: Mapping[str, str] | None = None) -> None:
        self.retry = retry_policy(retries, backoff, methods)
        self.environ = dict(os.environ if environ is None else environ)
        self.verify = verify
        self._managers: dict[str | None, PoolManager] = {}
        self._lock = threading.Lock()  # one client serves parallel uploads

    def request(self, method: str, url: str, deadline: Deadline, *,
                headers: Mapping[str, str] | None = None, body: bytes | None = None,
                form: Mapping[str, str] | None = None,
                query: Mapping[str, str | list[str]] | None = None,
                stream: bool = False, redirect: bool = True) -> BaseHTTPResponse:
        """One request, its retries and redirects bounded by ``deadline``; credentials in
        the URL are sent as basic auth. ``form``: an
        urlencoded body; ``query``: parameters added to the URL (a list repeats the key);
        ``stream``: the caller reads the body (``stream()``) and then closes the response;
        ``redirect=False``: a redirect is returned, not followed (a body carrying a secret
        must not be resent to wherever a 307 points)."""
        headers = dict(headers or {})
        parts = urlsplit(url)
        if parts.username is not None:  # user:password@host means basic auth, as for requests
            headers.setdefault("Authorization", make_headers(basic_auth=(
                f"{unquote(parts.username)}:{unquote(parts.password or '')}"))["authorization"])
            url = parts._replace(netloc=parts.netloc.rpartition("@")[2]).geturl()
        if form is not None:
            body = urlencode(form).encode()
            headers.setdefault("Content-Type", "application/x-www-form-urlencoded")
        if query:
            url += ("&" if "?" in url else "?") + urlencode(query, doseq=True)
        with active(deadline):
            return self._manager(url).request(
                method, url, body=body, headers=headers, timeout=deadline.timeout(),
                retries=self.retry, redirect=redirect, preload_content=not stream)

    def _manager(self, url: str) -> PoolManager:
        proxy = environment_proxy(url, self.environ)
        with self._lock:
            if proxy not in self._managers:
                self._managers[proxy] = self._new_manager(proxy)
            return self._managers[proxy]

    def _new_manager(self, proxy: str | None) -> PoolManager:
        # As requests' pools: up to 10 connections per host, so parallel uploads reuse them.
        options = {**_tls_options(self.verify, self.environ), "maxsize": POOL_SIZE}
        manager: PoolManager
        if proxy is None:
            manager = PoolManager(**options)
        else:
            parts = urlsplit(proxy)
            auth = (f"{unquote(parts.username)}:{unquote(parts.password or '')}"
                    if parts.username else None)
            manager = ProxyManager(proxy, proxy_headers=make_headers(proxy_basic_auth=auth),
                                   **options)
        manager.pool_classes_by_scheme = POOL_CLASSES  # the deadline bounds every read
        return manager


def environment_proxy(url: str, environ: Mapping[str, str]) -> str | None:
    """The proxy ``environ`` names for ``url``, None when none does or no_proxy names its
    host."""
    def variable(name: str) -> str:
        return (environ.get(name) or environ.get(name.upper()) or "").strip()

    parts = urlsplit(url)
    proxy = variable(f"{parts.scheme}_proxy") or variable("all_proxy")
    if not proxy or not parts.hostname:
        return None
    no_proxy = variable("no_proxy")
    if no_proxy:
        # urllib.request is heavy; only no_proxy needs it
        from urllib.request import proxy_bypass_environment

        if proxy_bypass_environment(parts.netloc, {"no": no_proxy}):
            return None
    return proxy if "://" in proxy else f"http://{proxy}"


def _tls_options(verify: bool | str, environ: Mapping[str, str]) -> dict[str, object]:
    if verify is False:
        return {"cert_reqs": "CERT_NONE"}
    if verify is True:
        verify = environ.get("REQUESTS_CA_BUNDLE") or environ.get("CURL_CA_BUNDLE") or ""
        if not verify:
            import certifi  # certifi loads only when no CA bundle is given

            verify = certifi.where()
    if os.path.isdir(verify):
        return {"cert_reqs": "CERT_REQUIRED", "ca_cert_dir": verify}
    return {"cert_reqs": "CERT_REQUIRED", "ca_certs": verify}
