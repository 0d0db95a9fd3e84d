"""`serve`: the engine's own error, not docker's last line (a usage hint), redacted.

The docker CLI is the real one; the engine is either absent (a socket nobody listens on)
or a minimal Engine API on loopback that refuses the way a registry-backed engine does.
"""

from __future__ import annotations

import json
import re
import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.helpers import run_cli

from mlflow_steps.runtime.serving import engine_error, server_error

DOCKER = shutil.which("docker")  # setup installs docker.io
SECRET = "tok-" + "e9f1c2d3a4b5"


class RefusingEngine:
    """Answers /_ping like an engine; no image is present and pulling it is refused."""

    def __init__(self, pull_error: str) -> None:
        self.requests: list[str] = []
        engine = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _reply(self, status: int, body: dict | None = None) -> None:
                data = json.dumps(body).encode() if body is not None else b"OK"
                self.send_response(status)
                self.send_header("Api-Version", "1.45")
                self.send_header("Ostype", "linux")
                self.send_header("Content-Type", "application/json" if body is not None
                                 else "text/plain")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(data)

            def _serve(self) -> None:
                engine.requests.append(f"{self.command} {self.path}")
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                path = re.sub(r"^/v[\d.]+", "", self.path)
                if path.startswith("/_ping"):
                    self._reply(200)
                elif path.startswith("/containers/create"):
                    self._reply(404, {"message": "No such image: example/model:1"})
                elif path.startswith("/images/create"):
                    self._reply(500, {"message": pull_error})
                elif path.startswith("/containers/"):
                    self._reply(404, {"message": "No such container"})
                else:
                    self._reply(404, {"message": "page not found"})

            do_GET = do_POST = do_DELETE = do_HEAD = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.host = f"tcp://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()


def serve(tmp_path: Path, docker_host: str, **extra: str):
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_HOST": docker_host,
           "DOCKER_CONFIG": str(tmp_path / "docker-config"),
           "MLFLOW_STEPS_DOCKER_CLI": DOCKER or "", **extra}
    return run_cli("serve", "--model", "models:/m-0123", "--runtime-image",
                   "example/model:1", env=env, timeout=120)


def test_refused_pull_reports_the_engines_error(tmp_path: Path) -> None:
    engine = RefusingEngine(
        f'Head "https://registry.example/v2/example/model/manifests/1": unauthorized: '
        f"token {SECRET} rejected for https://robot:{SECRET}@registry.example")
    try:
        result = serve(tmp_path, engine.host, REGISTRY_TOKEN=SECRET)
    finally:
        engine.stop()
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow-steps: error: engine: docker run failed: Error response "
                           'from daemon: Head "https://registry.example/v2/example/model/'
                           'manifests/1": unauthorized'), last
    assert "--help" not in last and SECRET not in result.stderr
    assert "robot:***@registry.example" in last
    assert any("/images/create" in r for r in engine.requests)


def test_absent_engine(tmp_path: Path) -> None:
    result = serve(tmp_path, f"unix://{tmp_path}/none.sock")
    assert result.returncode == 2, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow-steps: error: engine: docker run failed: Cannot connect "
                           f"to the Docker daemon at unix://{tmp_path}/none.sock"), last


@pytest.mark.parametrize(("output", "line"), [
    ("Unable to find image 'nope:1' locally\n"
     "docker: Error response from daemon: pull access denied for nope, repository does not "
     "exist or may require 'docker login': denied: requested access to the resource is "
     "denied\n\nRun 'docker run --help' for more information\n",
     "Error response from daemon: pull access denied for nope, repository does not exist or "
     "may require 'docker login': denied: requested access to the resource is denied"),
    ("docker: Error response from daemon: Conflict. The container name \"/mlflow-serve-x\" is "
     "already in use by container \"abc\".\nSee 'docker run --help'.\n",
     "Error response from daemon: Conflict. The container name \"/mlflow-serve-x\" is "
     "already in use by container \"abc\"."),
    ("1: Pulling from library/python\n3f4ca61aafcd: Pulling fs layer\n"
     "docker: failed to register layer: no space left on device\nSee 'docker run --help'.\n",
     "failed to register layer: no space left on device"),
    ("docker: invalid reference format.\nSee 'docker run --help'.\n",
     "invalid reference format."),
    ("", "no output"),
])
def test_engine_error_line(output: str, line: str) -> None:
    assert engine_error(output) == line


def test_server_error_line() -> None:
    logs = ("2026/01/01 INFO mlflow.models: starting\nTraceback (most recent call last):\n"
            '  File "x.py", line 1, in <module>\n'
            "mlflow.exceptions.MlflowException: Registered Model 'iris' not found\n")
    assert server_error(logs) == ("mlflow.exceptions.MlflowException: Registered Model "
                                  "'iris' not found")
    assert server_error("listening\nbye\n") == "listening | bye"
