"""The loopback HTTP server every fake in tests/support is: 127.0.0.1 on a free port, served
on daemon threads from construction on, stopped by ``stop()`` or at the end of its ``with``.

A subclass answers each request in ``serve(handler, body)`` (the request body already read
by its Content-Length), or hands its own handler class to ``__init__``. What a fake keeps
waiting waits on ``released``, which ``stop()`` sets, and at most HOLD_SECONDS.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Self

HOLD_SECONDS = 60  # the longest any fake keeps a client waiting (stop() releases it sooner)


class QuietServer(ThreadingHTTPServer):
    """A client that hangs up (a deadline under test) is no error: nothing is printed, which
    an in-process CLI test running meanwhile would take for its own stderr."""

    def handle_error(self, request, client_address) -> None:  # type: ignore[no-untyped-def]
        pass


class LoopbackServer:
    """A loopback HTTP server (see the module docstring)."""

    protocol = "HTTP/1.1"  # HTTP/1.0: a connection per request, answers without a length
    server_class: type[ThreadingHTTPServer] = QuietServer

    def __init__(self, handler: Callable[..., BaseHTTPRequestHandler] | None = None) -> None:
        self.released = threading.Event()
        self.httpd = self.server_class(("127.0.0.1", 0), handler or self._handler())
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    def serve(self, handler: BaseHTTPRequestHandler, body: bytes) -> None:
        """Answer one request (what the fake is)."""
        raise NotImplementedError

    def stop(self) -> None:
        self.released.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(QuietHandler):
            protocol_version = server.protocol

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                server.serve(self, self.rfile.read(length) if length else b"")

            do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        return Handler


class QuietHandler(BaseHTTPRequestHandler):
    """A request handler that logs nothing (pytest shows a failing test's own output)."""

    def log_message(self, *args: object) -> None:
        pass
