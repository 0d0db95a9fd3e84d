"""An HTTP proxy in front of a real registry that fails the first N requests."""

from __future__ import annotations

import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import requests

HOP_HEADERS = {"connection", "transfer-encoding", "keep-alive", "content-length"}


class FaultyProxy:
    """Answers ``status`` to the first ``failures`` requests, then forwards to ``target``."""

    def __init__(self, target: str, failures: int, status: int = 500) -> None:
        self.target = target
        self.failures = failures
        self.status = status
        self.seen = 0
        proxy = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                proxy.seen += 1
                if proxy.seen <= proxy.failures:
                    self.send_response(proxy.status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                upstream = requests.request(self.command, proxy.target + self.path,
                                            headers=headers, timeout=10)
                self.send_response(upstream.status_code)
                for key, value in upstream.headers.items():
                    if key.lower() not in HOP_HEADERS:
                        self.send_header(key, value)
                self.send_header("Content-Length", str(len(upstream.content)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(upstream.content)

            do_GET = do_HEAD = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
