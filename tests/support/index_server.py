"""A PEP 503 package index on a loopback port, served by a process of its own: an index
served from a thread of the test process answers slowly while a build running in that
process holds the GIL (uv asks it for every package of the environment)."""

from __future__ import annotations

import contextlib
import re
import select
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

START_SECONDS = 30  # to say its port; and to end once killed
_SERVING = re.compile(r"Serving HTTP on 127\.0\.0\.1 port (\d+)")


@contextlib.contextmanager
def local_index(root: Path) -> Iterator[str]:
    """A PEP 503 index over ``root/simple`` on a loopback port; its URL."""
    server = subprocess.Popen(
        [sys.executable, "-u", "-m", "http.server", "--bind", "127.0.0.1", "--directory",
         str(root), "0"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        assert server.stdout is not None
        ready, _, _ = select.select([server.stdout], [], [], START_SECONDS)
        line = server.stdout.readline() if ready else ""  # its first line names the port
        serving = _SERVING.search(line)
        assert serving, f"the index server did not start: {line!r}"
        yield f"http://127.0.0.1:{serving.group(1)}/simple/"
    finally:
        server.kill()
        server.wait(timeout=START_SECONDS)
