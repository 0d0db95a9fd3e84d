"""Deadlines: the end of one logical operation's network budget, enforced at the socket.

A ``Deadline`` bounds everything a request does (see ``retry``). While one is ``active``,
connections from the ``POOL_CLASSES`` pools make every read of a response (status line,
headers, body, preloaded or streamed) and every send wait at most what is left of it, so a
server that trickles a byte a second cannot hold a request past it. ``BoundedAdapter`` does
the same for a requests session (MLflow's client).
"""

from __future__ import annotations

import http.client
import io
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from urllib3.connection import HTTPConnection, HTTPSConnection
from urllib3.connectionpool import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.util import Timeout

DEFAULT_BUDGET_SECONDS = 30.0
# The deadline of the request being sent, for the retry policy and the bounded connections.
ACTIVE: ContextVar[Deadline | None] = ContextVar("mlflow_steps_deadline", default=None)


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
        """A urllib3 ``timeout=`` bounded by this deadline."""
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


# --- The deadline at the socket: every read and send waits at most what is left of it ------

def _socket_timeout(deadline: Deadline, per_operation: float | None) -> float:
    """The timeout of the next socket operation: what is left of ``deadline``, at most
    ``per_operation``; TimeoutError once the deadline is spent."""
    left = deadline.remaining()
    if left <= 0:
        raise TimeoutError(f"timed out (the network budget of {deadline.seconds:g} s is spent)")
    return left if per_operation is None else min(left, per_operation)


class _DeadlineReader(io.RawIOBase):
    """A socket's reads, each waiting at most what is left of ``deadline``."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        super().__init__()
        self._sock = sock
        self._raw = sock.makefile("rb", buffering=0)
        self._deadline = deadline
        self._per_read = sock.gettimeout()  # the read timeout the client set

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int | None:  # type: ignore[no-untyped-def, override]
        self._sock.settimeout(_socket_timeout(self._deadline, self._per_read))
        return self._raw.readinto(buffer)

    def close(self) -> None:
        if not self.closed:
            self._raw.close()
        super().close()


class _BoundedSocket:
    """What ``http.client.HTTPResponse`` takes a socket for: a reader of it."""

    def __init__(self, sock: socket.socket, deadline: Deadline) -> None:
        self._sock = sock
        self._deadline = deadline

    def makefile(self, mode: str) -> io.BufferedReader:
        return io.BufferedReader(_DeadlineReader(self._sock, self._deadline))


class _DeadlineResponse(http.client.HTTPResponse):
    """A response (status line, headers, body) read under the deadline active when the
    request was sent; it stays bound to it when the body is streamed later."""

    def __init__(self, sock, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        deadline = ACTIVE.get()
        super().__init__(sock if deadline is None else _BoundedSocket(sock, deadline),
                         *args, **kwargs)


class _DeadlineSending:
    """Connection mixin: each send waits at most what is left of the active deadline;
    responses are ``_DeadlineResponse``."""

    sock: socket.socket | None
    response_class = _DeadlineResponse

    def send(self, data) -> None:  # type: ignore[no-untyped-def]
        deadline = ACTIVE.get()
        if deadline is not None and self.sock is not None:
            self.sock.settimeout(_socket_timeout(deadline, self.sock.gettimeout()))
        super().send(data)  # type: ignore[misc]


class _BoundedHTTPConnection(_DeadlineSending, HTTPConnection):
    pass


class _BoundedHTTPSConnection(_DeadlineSending, HTTPSConnection):
    pass


class _BoundedHTTPConnectionPool(HTTPConnectionPool):
    ConnectionCls = _BoundedHTTPConnection


class _BoundedHTTPSConnectionPool(HTTPSConnectionPool):
    ConnectionCls = _BoundedHTTPSConnection  # type: ignore[assignment]


# A urllib3 pool manager's ``pool_classes_by_scheme`` under which the deadline is total.
POOL_CLASSES = {"http": _BoundedHTTPConnectionPool, "https": _BoundedHTTPSConnectionPool}


class BoundedAdapter:
    """Mixin for a requests ``HTTPAdapter`` subclass: each ``send`` (urllib3's retries and
    the reading of the body included) is bounded in total by a deadline of ``budget`` s."""

    budget: float = DEFAULT_BUDGET_SECONDS

    def init_poolmanager(self, *args, **kwargs) -> None:  # type: ignore[no-untyped-def]
        super().init_poolmanager(*args, **kwargs)  # type: ignore[misc]
        self.poolmanager.pool_classes_by_scheme = POOL_CLASSES  # type: ignore[attr-defined]

    def proxy_manager_for(self, proxy, **kwargs):  # type: ignore[no-untyped-def]
        manager = super().proxy_manager_for(proxy, **kwargs)  # type: ignore[misc]
        manager.pool_classes_by_scheme = POOL_CLASSES
        return manager

    def send(self, request, **kwargs):  # type: ignore[no-untyped-def]
        with active(Deadline(self.budget)):
            return super().send(request, **kwargs)  # type: ignore[misc]


@contextmanager
def active(deadline: Deadline) -> Iterator[None]:
    """Let ``BudgetRetry`` and the bounded connections see the deadline of the request being
    sent."""
    token = ACTIVE.set(deadline)
    try:
        yield
    finally:
        ACTIVE.reset(token)
