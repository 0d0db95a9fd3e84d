"""A PEP 503 package index on a loopback port."""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Iterator
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from support.http_server import LoopbackServer, QuietHandler


class _IndexHandler(QuietHandler, SimpleHTTPRequestHandler):
    """Files under the served directory, nothing logged."""


@contextlib.contextmanager
def local_index(root: Path) -> Iterator[str]:
    """A PEP 503 index over ``root/simple`` on a loopback port; its URL."""
    with LoopbackServer(functools.partial(_IndexHandler, directory=str(root))) as server:
        yield f"{server.url}/simple/"
