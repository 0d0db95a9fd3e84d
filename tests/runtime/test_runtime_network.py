"""The runtime step against tracking servers that do not answer, rate-limit or refuse:
every wait bounded by MLFLOW_STEPS_NETWORK_TIMEOUT, one line, no secret."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from support.faulty_proxy import SilentServer, forward
from support.helpers import run_cli
from support.runtime_env import example, results, step_env

from mlflow_steps.core.errors import StepError
from mlflow_steps.runtime.tracking import (
    BACKOFF_FACTOR,
    MAX_RETRIES,
    TIMEOUT,
    bounded_http,
    check_reachable,
    http_settings,
    retry_after_seconds,
)

PASSWORD = "pw-" + "5ecret-value"
Behaviour = Callable[[BaseHTTPRequestHandler, int], bool]


class Scripted:
    """An HTTP server whose n-th request is answered by ``behave(handler, n)``; when that
    returns False the request is forwarded to ``target`` (a real tracking server)."""

    def __init__(self, behave: Behaviour, target: str | None = None) -> None:
        self.seen = 0
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def _serve(self) -> None:
                with server.lock:
                    server.seen += 1
                    number = server.seen
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if not behave(self, number):
                    forward(self, target, body, timeout=60)

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _serve

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def answer(handler: BaseHTTPRequestHandler, status: int, body: bytes = b"",
           headers: dict[str, str] | None = None) -> bool:
    handler.send_response(status)
    for key, value in (headers or {}).items():
        handler.send_header(key, value)
    handler.send_header("Content-Length", str(len(body)))
    handler.end_headers()
    handler.wfile.write(body)
    return True


def hang(handler: BaseHTTPRequestHandler) -> bool:
    time.sleep(120)
    return True


def run_against(tmp_path: Path, url: str, budget: str = "3",
                **extra: str) -> tuple[object, float]:
    netloc = url.removeprefix("http://")
    env = step_env(tmp_path, f"http://user:{PASSWORD}@{netloc}",
                   MLFLOW_STEPS_NETWORK_TIMEOUT=budget,
                   MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT="0",  # ~5 s less in log_model
                   **extra)
    started = time.monotonic()  # in a process of its own: timed until the process has ended
    result = run_cli("run", str(example(tmp_path)), env=env, timeout=300, process=True)
    return result, time.monotonic() - started


def assert_one_line_failure(result, message: str) -> None:
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow-steps: error: ") and message in last, result.stderr[-3000:]
    assert "Traceback" not in result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_silent_server_fails_within_the_budget(tmp_path: Path) -> None:
    """It accepts and never answers: ~88 s before the budget, now the budget (3 s)."""
    server = SilentServer()
    try:
        result, seconds = run_against(tmp_path, f"http://{server.address}")
    finally:
        server.stop()
    assert_one_line_failure(result, f"tracking server http://user:***@{server.address} did "
                            "not answer within 3 s (MLFLOW_STEPS_NETWORK_TIMEOUT sets the budget)")
    assert seconds < 20, seconds  # 3 s budget + interpreter and MLflow start-up
    assert results(tmp_path) == {}


def test_server_that_stops_answering_after_the_check(tmp_path: Path) -> None:
    """MLflow's own retries (derived from the budget) bound every later call too."""
    server = Scripted(lambda handler, n: answer(handler, 200, b"{}", {
        "Content-Type": "application/json"}) if n == 1 else hang(handler))
    try:
        result, seconds = run_against(tmp_path, server.url)
    finally:
        server.stop()
    assert result.returncode == 2, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow-steps: error: mlflow: ") and "failed: no answer" in last
    assert PASSWORD not in result.stderr and "Traceback" not in result.stderr
    assert seconds < 25, seconds
    assert server.seen >= 2  # the check, then the experiment look-up (and its retry)


def test_retry_after_within_the_budget_is_waited_for(mlflow_server, tmp_path: Path) -> None:
    """Two 429s with Retry-After: 1, then the real server: the run goes through."""
    server = Scripted(lambda handler, n: n <= 2 and answer(
        handler, 429, b'{"error_code": "REQUEST_LIMIT_EXCEEDED"}', {"Retry-After": "1"}),
        target=mlflow_server.url)
    try:
        result, _ = run_against(tmp_path, server.url, budget="20")
    finally:
        server.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert results(tmp_path)["model-url"] == result.stdout.strip()
    assert PASSWORD not in result.stdout + result.stderr
    assert server.seen > 3


def test_retry_after_beyond_the_budget_fails_at_once(tmp_path: Path) -> None:
    server = Scripted(lambda handler, n: answer(handler, 429, b"slow down",
                                                {"Retry-After": "600"}))
    try:
        result, seconds = run_against(tmp_path, server.url, budget="5")
    finally:
        server.stop()
    assert_one_line_failure(result, "answered HTTP 429 and asks to retry after 600 s, more "
                            "than the 5 s network budget: retry later or raise "
                            "MLFLOW_STEPS_NETWORK_TIMEOUT")
    assert seconds < 15 and server.seen == 1


@pytest.mark.parametrize(("status", "body", "headers", "message"), [
    (401, b"", {}, "refused the request (HTTP 401): set MLFLOW_TRACKING_TOKEN"),
    (404, b'{"message": "no such endpoint"}', {"Content-Type": "application/json"},
     "answered HTTP 404: no such endpoint"),
    (200, b"<html>welcome</html>", {"Content-Type": "text/html"},
     "answered, but not as an MLflow tracking server (text/html from "
     "/api/2.0/mlflow/experiments/search): check the URL"),
])
def test_refusals_are_one_line_at_once(tmp_path: Path, status: int, body: bytes,
                                       headers: dict[str, str], message: str) -> None:
    server = Scripted(lambda handler, n: answer(handler, status, body, headers))
    try:
        result, seconds = run_against(tmp_path, server.url, budget="30")
    finally:
        server.stop()
    assert_one_line_failure(result, message)
    assert server.seen == 1 and seconds < 20


def test_check_reachable_waits_for_retry_after_in_process() -> None:
    server = Scripted(lambda handler, n: answer(handler, 503, b"", {"Retry-After": "2"})
                      if n == 1 else answer(handler, 200, b'{"experiments": []}',
                                            {"Content-Type": "application/json"}))
    try:
        started = time.monotonic()
        check_reachable(None, server.url, {"MLFLOW_STEPS_NETWORK_TIMEOUT": "10"})
        assert 1.9 <= time.monotonic() - started < 8
        assert server.seen == 2
    finally:
        server.stop()


def test_connection_refused_fails_fast_whatever_the_budget() -> None:
    """Nothing listens there: a second's retries (a restarting server), not the budget."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        started = time.monotonic()
        with pytest.raises(StepError, match=r"tracking server http://127.0.0.1:\d+: Connection "
                           r"refused \(3 attempts\): check the URL and that the server is up"):
            check_reachable(None, f"http://127.0.0.1:{port}",
                            {"MLFLOW_STEPS_NETWORK_TIMEOUT": "30"})
        assert time.monotonic() - started < 5


@pytest.mark.parametrize("budget", [0.5, 1, 2, 3, 5, 6, 10, 15, 30, 60, 300, 3600])
def test_mlflow_retries_fit_in_the_budget(budget: float) -> None:
    settings = http_settings(budget)
    retries, timeout = int(settings[MAX_RETRIES]), int(settings[TIMEOUT])
    factor = int(settings[BACKOFF_FACTOR])
    worst = (retries + 1) * timeout + sum(factor * 2 ** (n - 1) for n in range(2, retries + 1))
    assert worst <= max(budget, 1)
    assert timeout >= 1 and worst >= budget / 2  # a timeout too short fails slow servers


def test_user_settings_win(monkeypatch) -> None:
    monkeypatch.delenv(TIMEOUT, raising=False)
    monkeypatch.delenv(MAX_RETRIES, raising=False)
    import os

    with bounded_http({"MLFLOW_STEPS_NETWORK_TIMEOUT": "30", TIMEOUT: "300"}) as added:
        assert TIMEOUT not in added and os.environ.get(TIMEOUT) is None
        assert added[MAX_RETRIES] == os.environ[MAX_RETRIES] == "2"
    assert MAX_RETRIES not in os.environ


@pytest.mark.parametrize(("value", "seconds"), [
    (None, None), ("", None), ("7", 7.0), ("soon", None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0.0),
])
def test_retry_after_values(value: str | None, seconds: float | None) -> None:
    assert retry_after_seconds(value) == seconds


@pytest.mark.parametrize(("message", "line"), [
    ("API request to http://h/api/2.0/mlflow/runs/get failed with exception HTTPConnectionPool("
     "host='h', port=80): Max retries exceeded with url: /api/2.0/mlflow/runs/get?run_id=1 "
     "(Caused by ReadTimeoutError(\"HTTPConnectionPool(host='h', port=80): Read timed out. "
     "(read timeout=9)\"))",
     "API request to http://h/api/2.0/mlflow/runs/get failed: no answer within 9 s, retries "
     "included (MLFLOW_STEPS_NETWORK_TIMEOUT, or MLFLOW_HTTP_REQUEST_TIMEOUT and "
     "MLFLOW_HTTP_REQUEST_MAX_RETRIES when set)"),
    ("API request to http://h/api/2.0/mlflow/runs/create failed with exception "
     "HTTPConnectionPool(host='h', port=80): Max retries exceeded with url: /x (Caused by "
     "ResponseError('too many 429 error responses'))",
     "API request to http://h/api/2.0/mlflow/runs/create failed: too many 429 error responses"),
    ("API request to http://h/api failed with exception HTTPConnectionPool(host='h', port=80): "
     "Max retries exceeded with url: /api (Caused by NewConnectionError('<urllib3.connection."
     "HTTPConnection object at 0x7f>: Failed to establish a new connection: [Errno 111] "
     "Connection refused'))",
     "API request to http://h/api failed: Connection refused"),
    ("RESOURCE_DOES_NOT_EXIST: Run 'x' not found", "RESOURCE_DOES_NOT_EXIST: Run 'x' not found"),
])
def test_mlflow_request_failures_condensed(message: str, line: str) -> None:
    from mlflow_steps.runtime.tracking import condense

    assert condense(message) == line
