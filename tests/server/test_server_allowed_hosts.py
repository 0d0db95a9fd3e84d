"""Host headers: `check` prints the list MLflow's security middleware enforces, and a real
server answers exactly that way (403 "Invalid Host header" outside the list, /health exempt).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import requests
from devservices import TrackingServer
from support.helpers import run_cli
from support.server_testing import clean_env

API = "/api/2.0/mlflow/experiments/search?max_results=1"
PREFIX = "server check: allowed Host headers "


def check(tmp_path: Path, **values: str):
    return run_cli("server", "check", "--host", "127.0.0.1", env=clean_env(
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'db.sqlite'}",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"), **values))


def allowed_line(result) -> str:
    (line,) = [line for line in result.stdout.splitlines() if line.startswith(PREFIX)]
    return line


def test_default_list_is_printed(tmp_path: Path) -> None:
    from mlflow.server.security_utils import get_default_allowed_hosts

    result = check(tmp_path)
    assert result.returncode == 0, result.stderr
    line = allowed_line(result)
    assert line.startswith(f"{PREFIX}(MLflow's default; set MLFLOW_SERVER_ALLOWED_HOSTS to add "
                           "the names clients use): ")
    assert line.partition("): ")[2].split(", ") == get_default_allowed_hosts()


def test_configured_list_is_printed(tmp_path: Path) -> None:
    result = check(tmp_path, MLFLOW_SERVER_ALLOWED_HOSTS="mlflow.example.com, mlflow-svc:*")
    assert result.returncode == 0, result.stderr
    assert allowed_line(result) == (f"{PREFIX}(MLFLOW_SERVER_ALLOWED_HOSTS): "
                                    "mlflow.example.com, mlflow-svc:*")


@pytest.mark.parametrize(("values", "source"), [
    ({"MLFLOW_SERVER_ALLOWED_HOSTS": "a.example.com,*"}, "MLFLOW_SERVER_ALLOWED_HOSTS"),
    ({"MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE": "true"},
     "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE is true: no Host check"),
])
def test_any_host(tmp_path: Path, values: dict[str, str], source: str) -> None:
    result = check(tmp_path, **values)
    assert result.returncode == 0, result.stderr
    assert allowed_line(result) == f"{PREFIX}({source}): any"


@pytest.mark.parametrize(("value", "needle"), [
    ("https://mlflow.example.com", "entry 'https://mlflow.example.com' can never match"),
    ("mlflow.example.com/", "entry 'mlflow.example.com/' can never match"),
    ("mlflow example.com", "entry 'mlflow example.com' can never match"),
    (",", "lists no host: every request but /health would get 403"),
    (" ", "lists no host"),
])
def test_entries_that_match_nothing_are_refused(tmp_path: Path, value: str, needle: str) -> None:
    result = check(tmp_path, MLFLOW_SERVER_ALLOWED_HOSTS=value)
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mlflow-steps: check: MLFLOW_SERVER_ALLOWED_HOSTS: ") and needle in line
    assert allowed_line(result)  # still printed: it is what MLflow would enforce


@pytest.fixture(scope="module")
def listed_server(stack_root):
    server = TrackingServer(stack_root / "allowed-hosts", env={
        "MLFLOW_SERVER_ALLOWED_HOSTS": "mlflow.test:*,mlflow-svc"}).start()
    yield server
    server.stop()


@pytest.mark.parametrize(("host", "status"), [
    ("mlflow.test:5000", 200), ("mlflow-svc", 200),
    ("mlflow-svc:5000", 403),   # entries match the whole header, port included
    ("evil.example:5000", 403),
    ("127.0.0.1:5000", 403),    # the default list no longer applies once the variable is set
])
def test_server_enforces_the_printed_list(listed_server, host: str, status: int) -> None:
    response = requests.get(listed_server.url + API, headers={"Host": host}, timeout=10)
    assert response.status_code == status, response.text
    if status == 403:
        assert "Invalid Host header" in response.text
    assert requests.get(listed_server.url + "/health", headers={"Host": host},
                        timeout=10).status_code == 200


def test_serve_logs_the_list(listed_server) -> None:
    assert ("mlflow-steps server: allowed Host headers (MLFLOW_SERVER_ALLOWED_HOSTS): "
            "mlflow.test:*, mlflow-svc") in listed_server.service.log.read_text()
