"""Token policy: no open API on the network by accident, no placeholder or short tokens.

Without MLFLOW_TRACKING_TOKEN, `serve` only starts on a loopback address or with an explicit
--no-auth (MLFLOW_SERVER_NO_AUTH); a token that is set must look like a generated secret.
`check` judges the same configuration. Every refusal is one line naming the variable and
saying how to generate a token; the token itself is never printed.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import requests
import yaml
from devservices import TrackingServer
from devstack import free_port
from support.helpers import REPO, run_cli
from support.server_testing import clean_env

from mlflow_steps.server.config import TOKEN_MIN_LENGTH, is_loopback, token_problem

GOOD_TOKEN = "kq3N8xZ1vR7tLw2Yp9Jd4Hs6Fg0Cb5Ma"  # 32 characters, 32 distinct
GENERATE = 'python -c "import secrets; print(secrets.token_urlsafe(32))"'
API = "/api/2.0/mlflow/experiments/search?max_results=1"


def shipped_placeholder() -> str:
    """The token value deploy/kubernetes/secret.yaml ships."""
    secret = yaml.safe_load((REPO / "deploy" / "kubernetes" / "secret.yaml").read_text())
    return secret["stringData"]["MLFLOW_TRACKING_TOKEN"]


def env(tmp_path: Path, **values: str) -> dict[str, str]:
    return clean_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{tmp_path / 'store' / 'db.sqlite'}",
                     MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"), **values)


def refused(result, *needles: str) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("token", ["CHANGE-ME", "change-me", "changeme", "Change_Me_Please_0123456",
                                   "REPLACE-ME-WITH-A-REAL-TOKEN", "<your-token>",
                                   "placeholder-token-1234567890", "example-token-abcdefghijkl"])
def test_placeholders_are_refused(token: str) -> None:
    assert "placeholder" in token_problem(token)


@pytest.mark.parametrize("token", ["...", "s3cret", "a1b2c3d4e5f6g7h8i9j0k1l",  # 23
                                   "x" * 40, "abababababababababababababab"])
def test_short_or_repetitive_tokens_are_refused(token: str) -> None:
    problem = token_problem(token)
    assert problem and GENERATE in problem and token not in problem


@pytest.mark.parametrize("token", [GOOD_TOKEN, "0f" * 12 + "a1b2c3d4",
                                   "image-test-token-0a1b2c3d4e5f"])
def test_generated_tokens_pass(token: str) -> None:
    assert len(token) >= TOKEN_MIN_LENGTH and token_problem(token) is None


def test_secrets_token_urlsafe_passes() -> None:
    import secrets

    assert all(token_problem(secrets.token_urlsafe(32)) is None for _ in range(200))


@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.0.0.2", True), ("::1", True), ("localhost", True),
    ("LOCALHOST", True), ("0.0.0.0", False), ("::", False), ("10.1.2.3", False),
    ("mlflow.example.com", False), ("", False)])
def test_loopback_addresses(host: str, loopback: bool) -> None:
    assert is_loopback(host) is loopback


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize("token_env", [{}, {"MLFLOW_TRACKING_TOKEN": ""}], ids=["absent", "empty"])
def test_no_token_on_every_interface_is_refused(tmp_path: Path, warm_server_cli, command: str,
                                                token_env: dict[str, str]) -> None:
    run = warm_server_cli.run if command == "serve" else run_cli  # serve execs MLflow
    line = refused(run("server", command, "--port", str(free_port()),
                       env=env(tmp_path, **token_env)),
                   "MLFLOW_TRACKING_TOKEN / --token: not set", "0.0.0.0", "--no-auth",
                   "MLFLOW_SERVER_NO_AUTH", GENERATE)
    assert line.startswith("mlflow-steps: ")
    assert not (tmp_path / "store").exists() and not (tmp_path / "artifacts").exists()


@pytest.mark.parametrize("command", ["serve", "check"])
@pytest.mark.parametrize("token", ["placeholder", "short", "contradiction"])
def test_bad_tokens_are_refused(tmp_path: Path, warm_server_cli, command: str,
                                token: str) -> None:
    value = {"placeholder": shipped_placeholder(), "short": "tok-123456",
             "contradiction": GOOD_TOKEN}[token]
    extra = {"MLFLOW_SERVER_NO_AUTH": "true"} if token == "contradiction" else {}
    run = warm_server_cli.run if command == "serve" else run_cli  # serve execs MLflow
    result = run("server", command, "--host", "127.0.0.1", "--port", str(free_port()),
                 env=env(tmp_path, MLFLOW_TRACKING_TOKEN=value, **extra))
    needle = {"placeholder": "is a placeholder, not a secret",
              "short": f"too short to be a secret (at least {TOKEN_MIN_LENGTH})",
              "contradiction": "--no-auth (MLFLOW_SERVER_NO_AUTH) contradicts"}[token]
    refused(result, "MLFLOW_TRACKING_TOKEN / --token: ", needle)
    assert value not in result.stdout + result.stderr
    assert not (tmp_path / "store").exists()


def test_shipped_manifests_carry_the_refused_placeholder() -> None:
    """deploy/ must not ship a token the server would accept."""
    assert token_problem(shipped_placeholder()) is not None


@pytest.mark.parametrize("args", [("--no-auth",), ("--host", "127.0.0.1"), ("--host", "::1"),
                                  ("--host", "localhost")])
def test_check_passes_with_no_auth_or_loopback(tmp_path: Path, args) -> None:
    result = run_cli("server", "check", *args, env=env(tmp_path))
    assert result.returncode == 0, result.stderr
    expected = "auth=none (--no-auth)" if "--no-auth" in args else "auth=none)"
    assert expected in result.stdout


def test_no_auth_from_the_environment(tmp_path: Path) -> None:
    result = run_cli("server", "check", env=env(tmp_path, MLFLOW_SERVER_NO_AUTH="true"))
    assert result.returncode == 0 and "auth=none (--no-auth)" in result.stdout, result.stderr


def test_check_passes_with_a_generated_token(tmp_path: Path) -> None:
    result = run_cli("server", "check", env=env(tmp_path, MLFLOW_TRACKING_TOKEN=GOOD_TOKEN))
    assert result.returncode == 0 and "auth=token" in result.stdout, result.stderr
    assert GOOD_TOKEN not in result.stdout + result.stderr


class OpenServer(TrackingServer):
    """`serve --no-auth` on every interface (reached over loopback)."""

    def argv(self) -> list[str]:
        argv = super().argv()
        argv[argv.index("--host") + 1] = "0.0.0.0"
        return [*argv, "--no-auth"]


def test_no_auth_serves_an_open_api_on_every_interface(stack_root) -> None:
    server = OpenServer(stack_root / "open-no-auth").start()
    try:
        assert requests.get(server.url + API, timeout=10).status_code == 200
        log = server.service.log.read_text()
        assert "serving on 0.0.0.0:" in log and "auth=none (--no-auth)" in log
    finally:
        server.stop()


def test_loopback_serves_without_a_token(stack_root) -> None:
    server = TrackingServer(stack_root / "open-loopback").start()
    try:
        assert requests.get(server.url + API, timeout=10).status_code == 200
        assert re.search(r"serving on 127\.0\.0\.1:\d+ .*auth=none\)",
                         server.service.log.read_text())
    finally:
        server.stop()
