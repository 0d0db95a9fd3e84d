"""A hostile registry: a loopback HTTP server whose answer to each request a test scripts.

    with HostileRegistry(upstream=registry.url) as hostile:
        hostile.on("PUT", "/manifests/", answer(500))        # the first manifest PUT fails
        hostile.on("POST", "/blobs/uploads/", forward(location=foreign.url), times=None)
        client = RegistryClient(hostile.address)
        ...
        hostile.seen                                          # every request it was sent

A request goes to the first rule whose method and path pattern (``re.search``) match and that
has uses left (``times``, default 1; None: every time). Unmatched requests are forwarded to
``upstream`` (a plain-HTTP registry, e.g. the ``registry`` fixture; the Host header is kept,
so the Locations it answers name this server), or answered 404 without one.
``credentials=(user, password)``: a request without that Basic auth is answered 401 with a
Basic challenge before any rule. ``tls=True``: the same port also speaks HTTPS (its
self-signed certificate is ``ca_file``), so an https -> http redirect to the very same host
and port can be staged.

Actions: ``answer``, ``forward`` (with headers, body or Location rewritten), ``trickle`` (one
byte per interval), ``deep_json``, ``retry_after`` (429), ``reset`` (TCP RST), or any
``Callable[[Exchange], None]``. 127.0.0.1 only; every wait is bounded (HOLD_SECONDS), and
``stop`` releases whatever is still trickling.
"""

from __future__ import annotations

import base64
import http.client
import re
import socket
import struct
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from urllib.parse import urlsplit

from support.faulty_proxy import HOP_HEADERS, _untrusted_context
from support.http_server import HOLD_SECONDS, LoopbackServer, QuietServer

Action = Callable[["Exchange"], None]


@dataclass
class Seen:
    """One request the hostile registry received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    tls: bool

    def header(self, name: str) -> str | None:
        """The header ``name`` (any case), None when it was not sent."""
        return next((v for k, v in self.headers.items() if k.lower() == name.lower()), None)

    @property
    def authorization(self) -> str | None:
        return self.header("Authorization")


@dataclass
class Upstream:
    """The upstream registry's answer, before it is relayed (actions may edit it)."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes = b""

    def header(self, name: str) -> str | None:
        return next((v for k, v in self.headers if k.lower() == name.lower()), None)

    def set_header(self, name: str, value: str | None) -> None:
        """Replace (None: remove) the header ``name``."""
        self.headers = [(k, v) for k, v in self.headers if k.lower() != name.lower()]
        if value is not None:
            self.headers.append((name, value))


@dataclass
class _Rule:
    method: str
    pattern: re.Pattern[str]
    action: Action
    times: int | None


@dataclass
class Exchange:
    """One request being answered: what came in, and ways to answer it."""

    server: HostileRegistry
    handler: BaseHTTPRequestHandler
    seen: Seen

    def send(self, status: int, body: bytes | str = b"",
             headers: dict[str, str] | list[tuple[str, str]] | None = None,
             length: int | None = None) -> None:
        """Answer ``status`` with ``body`` (``length``: the Content-Length to claim)."""
        data = body.encode() if isinstance(body, str) else body
        pairs = list(headers.items()) if isinstance(headers, dict) else list(headers or [])
        handler = self.handler
        handler.send_response(status)
        for key, value in pairs:
            if key.lower() not in HOP_HEADERS:
                handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(data) if length is None else length))
        handler.end_headers()
        if handler.command != "HEAD":
            handler.wfile.write(data)
        handler.wfile.flush()

    def relay(self) -> Upstream:
        """This request sent on to the upstream registry: its answer (not yet relayed)."""
        if self.server.upstream is None:
            return Upstream(404, [("Content-Type", "application/json")],
                            b'{"errors":[{"code":"NOT_FOUND","message":"no upstream"}]}')
        target = urlsplit(self.server.upstream)
        connection = http.client.HTTPConnection(target.hostname, target.port, timeout=30)
        try:
            headers = {k: v for k, v in self.seen.headers.items()
                       if k.lower() not in HOP_HEADERS}
            connection.request(self.seen.method, self.seen.path, body=self.seen.body or None,
                               headers=headers)
            response = connection.getresponse()
            body = response.read()
            pairs = [(k, v) for k, v in response.getheaders() if k.lower() not in HOP_HEADERS]
            if self.seen.method == "HEAD":  # keep what a HEAD says of the body's size
                pairs.append(("Content-Length", response.getheader("Content-Length", "0")))
            return Upstream(response.status, pairs, body)
        finally:
            connection.close()

    def send_upstream(self, upstream: Upstream) -> None:
        length = upstream.header("Content-Length") if self.seen.method == "HEAD" else None
        pairs = [(k, v) for k, v in upstream.headers if k.lower() != "content-length"]
        self.send(upstream.status, upstream.body, pairs,
                  length=int(length) if length is not None else None)


def answer(status: int, body: bytes | str = b"", headers: dict[str, str] | None = None) -> Action:
    """Answer ``status`` with ``body`` and ``headers``."""
    return lambda exchange: exchange.send(status, body, headers)


def retry_after(seconds: float, status: int = 429) -> Action:
    """Answer ``status`` (429) asking to retry after ``seconds``."""
    return answer(status, b"", {"Retry-After": f"{seconds:g}"})


def deep_json(depth: int = 100_000, status: int = 200,
              content_type: str = "application/vnd.oci.image.manifest.v1+json") -> Action:
    """Answer JSON nested ``depth`` arrays deep."""
    return answer(status, b"[" * depth + b"]" * depth, {"Content-Type": content_type})


def forward(*, headers: dict[str, str | None] | None = None,
            body: Callable[[bytes], bytes] | None = None,
            location: str | None = None) -> Action:
    """Relay to the upstream registry, then edit its answer: ``headers`` replaced (None:
    removed), ``body`` passed through a function, the ``Location`` header's scheme and host
    replaced by those of the URL ``location`` (another server, playing a foreign host)."""
    def act(exchange: Exchange) -> None:
        upstream = exchange.relay()
        if body is not None:
            upstream.body = body(upstream.body)
        for name, value in (headers or {}).items():
            upstream.set_header(name, value)
        where = upstream.header("Location")
        if location and where:
            parts = urlsplit(where)
            suffix = where[len(f"{parts.scheme}://{parts.netloc}"):] if parts.netloc else where
            upstream.set_header("Location", location.rstrip("/") + suffix)
        exchange.send_upstream(upstream)

    return act


def trickle(body: bytes, interval: float = 1.0, status: int = 200,
            headers: dict[str, str] | None = None) -> Action:
    """Answer ``status`` and then ``body`` one byte per ``interval`` seconds (a slow loris),
    for at most HOLD_SECONDS or until the server stops."""
    def act(exchange: Exchange) -> None:
        handler = exchange.handler
        handler.send_response(status)
        for key, value in (headers or {}).items():
            handler.send_header(key, value)
        handler.send_header("Content-Length", str(len(body)))
        handler.end_headers()
        handler.wfile.flush()
        waited = 0.0
        for byte in body:
            if exchange.server.released.wait(interval) or waited > HOLD_SECONDS:
                break
            waited += interval
            try:
                handler.wfile.write(bytes([byte]))
                handler.wfile.flush()
            except OSError:
                break
        handler.close_connection = True

    return act


def reset() -> Action:
    """Close the connection with a TCP reset instead of answering (the body was read)."""
    def act(exchange: Exchange) -> None:
        connection = exchange.handler.connection
        connection.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        connection.close()
        exchange.handler.close_connection = True

    return act


class _Server(QuietServer):
    daemon_threads = True
    tls_context = None

    def finish_request(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        """Per connection: TLS when it opens with a handshake (and tls is on), else HTTP."""
        request.settimeout(HOLD_SECONDS)
        if self.tls_context is not None:
            try:
                first = request.recv(1, socket.MSG_PEEK)
            except OSError:
                return
            if first == b"\x16":
                try:
                    request = self.tls_context.wrap_socket(request, server_side=True)
                except OSError:
                    return
        super().finish_request(request, client_address)


class HostileRegistry(LoopbackServer):
    """A scripted loopback registry (see the module docstring)."""

    server_class = _Server

    def __init__(self, upstream: str | None = None, *,
                 credentials: tuple[str, str] | None = None, tls: bool = False) -> None:
        self.upstream = upstream
        self.credentials = credentials
        self.seen: list[Seen] = []
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._directory = tempfile.TemporaryDirectory(prefix="hostile-")
        super().__init__()
        if tls:
            self.httpd.tls_context = _untrusted_context(Path(self._directory.name))

    def on(self, method: str, path: str, action: Action, times: int | None = 1) -> None:
        """Answer requests of ``method`` (``*``: any) whose path matches the regular
        expression ``path`` with ``action``, ``times`` times (None: always)."""
        with self._lock:
            self._rules.append(_Rule(method.upper(), re.compile(path), action, times))

    def requests(self, method: str | None = None, path: str = "") -> list[Seen]:
        """The requests seen, of ``method`` and with ``path`` matching, in order."""
        return [one for one in list(self.seen) if (method is None or one.method == method)
                and re.search(path, one.path)]

    @property
    def ca_file(self) -> Path:
        """The certificate a client must trust to speak HTTPS to it (``tls=True``)."""
        return Path(self._directory.name) / "untrusted.crt"

    def stop(self) -> None:
        super().stop()
        self._directory.cleanup()

    def _take(self, method: str, path: str) -> Action | None:
        with self._lock:
            for rule in self._rules:
                if rule.method in ("*", method) and rule.pattern.search(path) and (
                        rule.times is None or rule.times > 0):
                    if rule.times is not None:
                        rule.times -= 1
                    return rule.action
        return None

    def _authorised(self, seen: Seen) -> bool:
        if self.credentials is None:
            return True
        token = base64.b64encode(":".join(self.credentials).encode()).decode()
        return seen.authorization == f"Basic {token}"

    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        seen = Seen(handler.command, handler.path, dict(handler.headers), body,
                    tls=hasattr(handler.connection, "cipher"))
        self.seen.append(seen)
        exchange = Exchange(self, handler, seen)
        if not self._authorised(seen):
            exchange.send(401, b'{"errors":[{"code":"UNAUTHORIZED"}]}', {
                "WWW-Authenticate": 'Basic realm="hostile"',
                "Content-Type": "application/json"})
            return
        action = self._take(handler.command, handler.path) or forward()
        action(exchange)
