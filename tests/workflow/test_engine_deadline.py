"""The local runner's engine requests have a deadline: an engine that does not answer in
time (removing a container that holds gigabytes on a slow disk) ends the step with one line
naming the engine and what to do, not a traceback or an empty source."""

from __future__ import annotations

import json
import re
import socketserver
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path

import pytest

from mlflow_steps.core.errors import StepError
from mlflow_steps.workflow.engine import ContainerSpec, DockerEngine

CONTAINER = {"Id": "c0ffee", "Name": "/mls-slow", "Config": {"Tty": False},
             "State": {"Status": "exited"}}


class _SlowRemoval(BaseHTTPRequestHandler):
    """Just enough of the Docker API for one container run; removal answers after
    ``server.remove_delay`` seconds."""

    def log_message(self, *args) -> None:  # quiet
        pass

    def _send(self, status: int, body: object = None) -> None:
        data = b"" if body is None else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        path = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
        if path == "/_ping":
            self._send(200, "OK")
        elif path == "/version":
            self._send(200, {"ApiVersion": "1.41", "Version": "20.10.24"})
        elif path == f"/containers/{CONTAINER['Id']}/json":
            self._send(200, CONTAINER)
        elif path == f"/containers/{CONTAINER['Id']}/logs":
            self._send(200)
        else:
            self._send(404, {"message": path})

    def do_POST(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        path = re.sub(r"^/v[0-9.]+", "", self.path.split("?")[0])
        if path == "/containers/create":
            self._send(201, {"Id": CONTAINER["Id"], "Warnings": []})
        elif path == f"/containers/{CONTAINER['Id']}/start":
            self._send(204)
        elif path == f"/containers/{CONTAINER['Id']}/wait":
            self._send(200, {"StatusCode": 0})
        else:
            self._send(404, {"message": path})

    def do_DELETE(self) -> None:
        time.sleep(self.server.remove_delay)  # type: ignore[attr-defined]
        self._send(204)


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Its handlers are joined when it closes (a slow removal must not outlive its test and
    write into another's output); a client that gave up is no error."""

    daemon_threads = False
    block_on_close = True
    remove_delay = 3.0

    def get_request(self):  # BaseHTTPRequestHandler wants a client address
        request, _ = super().get_request()
        return request, ("local", 0)

    def handle_error(self, request, client_address) -> None:
        pass  # the deadline test's client hangs up before the removal answers


@pytest.fixture
def slow_engine(tmp_path: Path) -> Iterator[str]:
    socket = tmp_path / "docker.sock"
    server = _Server(str(socket), _SlowRemoval)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"unix://{socket}"
    server.shutdown()
    server.server_close()


def test_a_removal_past_the_deadline_is_one_line(slow_engine: str) -> None:
    engine = DockerEngine(slow_engine, timeout=1)
    spec = ContainerSpec("mls-slow", "img", {}, (), None, "none")
    started = time.monotonic()
    with pytest.raises(StepError) as caught:
        engine.run(spec, lambda line: None)
    assert time.monotonic() - started < 2.9  # the deadline, not the engine, ended it
    message = str(caught.value)
    assert message.startswith(f"{slow_engine}: the engine did not remove container mls-slow "
                              "within 1 s (ReadTimeout)"), message
    assert "docker rm -f mls-slow" in message and "\n" not in message


def test_within_the_deadline_the_run_ends_with_the_exit_code(slow_engine: str) -> None:
    engine = DockerEngine(slow_engine, timeout=10)
    spec = ContainerSpec("mls-slow", "img", {}, (), None, "none")
    assert engine.run(spec, lambda line: None) == 0
