"""A slow-loris HTTP server: it answers one byte at a time (127.0.0.1 only, bounded).

    with TrickleServer({r"/manifests/": HEADERS, r"/token": BODY}, upstream=url) as server:
        ... requests to server.url ...

A request whose path matches a rule (``re.search``, first match) is answered as the rule
says: ``HEADERS`` trickles the status line and then an endless header line, ``BODY`` sends
the status line and headers at once (a large Content-Length) and trickles the body, and any
other value is a ``Callable[[BaseHTTPRequestHandler], None]`` that answers itself. Each
byte comes INTERVAL s after the last, well inside any per-read timeout, so only a deadline
for the whole request ends it. Unmatched requests are forwarded to ``upstream`` (a real
server), or answered 404 without one. A trickle stops after HOLD_SECONDS or at ``stop()``;
``seen`` lists the (method, path) of every request.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from http.server import BaseHTTPRequestHandler

from support.faulty_proxy import forward
from support.http_server import HOLD_SECONDS, LoopbackServer

HEADERS = "headers"
BODY = "body"
INTERVAL = 0.25
Rule = str | Callable[[BaseHTTPRequestHandler], None]


class TrickleServer(LoopbackServer):
    """A loopback HTTP server whose matching requests are answered a byte at a time."""

    def __init__(self, rules: Mapping[str, Rule], upstream: str | None = None) -> None:
        self.rules = dict(rules)
        self.upstream = upstream
        self.seen: list[tuple[str, str]] = []
        super().__init__()

    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        self.seen.append((handler.command, handler.path))
        rule = next((rule for pattern, rule in self.rules.items()
                     if re.search(pattern, handler.path)), None)
        if rule == HEADERS:
            self._trickle(handler, b"HTTP/1.1 200 OK\r\nX-Trickle: " + b"a" * 65000)
        elif rule == BODY:
            handler.wfile.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                                b"Content-Length: 1000000\r\n\r\n")
            self._trickle(handler, b"{" + b" " * 999999)
        elif callable(rule):
            rule(handler)
        elif self.upstream:
            forward(handler, self.upstream, body, timeout=HOLD_SECONDS)
        else:
            handler.send_response(404)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

    def _trickle(self, handler: BaseHTTPRequestHandler, data: bytes) -> None:
        """``data`` a byte per INTERVAL until it ends, HOLD_SECONDS pass or ``stop()``."""
        handler.close_connection = True
        for index in range(min(len(data), int(HOLD_SECONDS / INTERVAL))):
            try:
                handler.wfile.write(data[index:index + 1])
                handler.wfile.flush()
            except OSError:  # the client gave up: what a deadline is for
                return
            if self.released.wait(INTERVAL):
                return
