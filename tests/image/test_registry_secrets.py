"""No registry error ever shows a credential: not the config.json password (plain or as Basic
auth), not an identity token, not a token a real token server issued -- even when the
registry or the token endpoint echoes them back."""

from __future__ import annotations

import base64
import json
import os
from pathlib import Path

import pytest
from support.faulty_proxy import ScriptedServer
from support.helpers import docker_config
from support.token_server import SERVICE, TokenServer

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClient

USER, PASSWORD, REFRESH = "alice", "pw-Zq9xK2-registry-secret", "refresh-7Hq-identity-secret"
BASIC = base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()


def errors_json(message: str) -> str:
    return json.dumps({"errors": [{"code": "DENIED", "message": message}]})


def echoing(status: int):
    """A registry script: challenge; with an Authorization, answer ``status`` echoing it back
    (the header, its value, and for Basic the decoded user:password)."""
    def script(server: ScriptedServer, handler) -> None:
        auth = handler.headers.get("Authorization", "")
        if not auth:
            server.answer(handler, 401, headers={"WWW-Authenticate": server.challenge})
            return
        kind, _, value = auth.partition(" ")
        decoded = base64.b64decode(value).decode() if kind == "Basic" else ""
        server.answer(handler, status, errors_json(
            f"rejected Authorization: {auth} ({value}) {decoded}"),
            {"Content-Type": "application/json", "WWW-Authenticate": server.challenge})
    return script


@pytest.fixture
def tokens(tmp_path: Path):
    server = TokenServer(tmp_path, {USER: PASSWORD}, {REFRESH})
    yield server
    server.stop()


def scripted(script, challenge: str) -> ScriptedServer:
    server = ScriptedServer(script)
    server.challenge = challenge  # type: ignore[attr-defined]
    return server


def failure(host: str, environ: dict[str, str]) -> StepError:
    with pytest.raises(StepError) as caught:
        RegistryClient(host, environ=environ, budget=5, backoff=0.01).manifest_digest(
            "probe/x", "v1")
    return caught.value


def sent_tokens(server: ScriptedServer) -> set[str]:
    return {headers["Authorization"].partition(" ")[2] for _, _, headers in server.requests
            if headers.get("Authorization", "").startswith("Bearer ")}


def assert_clean(error: StepError, secrets: set[str]) -> None:
    """None of ``secrets`` (what the client held or was issued) in any part of the error."""
    text = " ".join(str(part) for part in (error, error.detail, error.source, error.field))
    for secret in secrets:
        assert secret not in text, text
    assert "***" in text or "DENIED" not in text  # what was echoed got masked


def held(identity: bool) -> set[str]:
    return {REFRESH} if identity else {PASSWORD, BASIC}


def password_config(tmp_path: Path, host: str) -> dict[str, str]:
    return {"DOCKER_CONFIG": str(docker_config(tmp_path / "cfg", {
        host: {"auth": BASIC}}))}


@pytest.mark.parametrize("status", [401, 403, 500])
def test_basic_auth_password_never_shown(tmp_path: Path, status: int) -> None:
    registry = scripted(echoing(status), 'Basic realm="test"')
    try:
        error = failure(registry.address, password_config(tmp_path, registry.address))
        assert any(h.get("Authorization") == f"Basic {BASIC}" for _, _, h in registry.requests)
    finally:
        registry.stop()
    assert_clean(error, held(False))


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("status", [401, 403])
def test_issued_token_never_shown(tmp_path: Path, tokens: TokenServer, identity: bool,
                                  status: int) -> None:
    registry = scripted(echoing(status), f'Bearer realm="{tokens.realm}",service="{SERVICE}"')
    entry = {"identitytoken": REFRESH} if identity else {"auth": BASIC}
    try:
        environ = {"DOCKER_CONFIG": str(docker_config(tmp_path / "cfg", {
            registry.address: entry}))}
        error = failure(registry.address, environ)
    finally:
        registry.stop()
    issued = sent_tokens(registry)
    assert issued and {r["subject"] for r in tokens.requests} == {
        "token-user" if identity else USER}
    assert_clean(error, issued | held(identity))


TOKEN_ENDPOINT_ECHOES = {  # name: (status, body)
    "401 details": (401, json.dumps({"details": f"bad password {PASSWORD} for {USER}"})),
    "400 refresh": (400, json.dumps({"error": f"invalid_grant: {REFRESH} expired"})),
    "403 errors": (403, errors_json(f"no, {USER}:{PASSWORD} / {BASIC} / {REFRESH}")),
    "token with a newline": (200, json.dumps({"token": f"{PASSWORD}\nX: 1"})),
    "token not JSON": (200, f"token={PASSWORD}"),
}


@pytest.mark.parametrize("identity", [False, True])
@pytest.mark.parametrize("name", TOKEN_ENDPOINT_ECHOES)
def test_token_endpoint_echoes_never_shown(tmp_path: Path, name: str, identity: bool) -> None:
    status, body = TOKEN_ENDPOINT_ECHOES[name]
    token_endpoint = ScriptedServer(lambda srv, handler: srv.answer(
        handler, status, body, {"Content-Type": "application/json"}))
    registry = scripted(echoing(401), f'Bearer realm="{token_endpoint.url}/token"')
    entry = {"identitytoken": REFRESH} if identity else {"auth": BASIC}
    try:
        environ = {"DOCKER_CONFIG": str(docker_config(tmp_path / "cfg", {
            registry.address: entry}))}
        error = failure(registry.address, environ)
    finally:
        registry.stop()
        token_endpoint.stop()
    assert "token endpoint" in str(error)
    assert_clean(error, held(identity))


def test_redirect_to_a_url_with_the_password_never_shown(tmp_path: Path) -> None:
    from devstack import free_port

    target = f"http://{USER}:{PASSWORD}@127.0.0.1:{free_port()}/v2/"
    registry = scripted(lambda srv, handler: srv.answer(handler, 307, headers={
        "Location": target}), "")
    try:
        error = failure(registry.address, password_config(tmp_path, registry.address))
    finally:
        registry.stop()
    assert_clean(error, held(False))


def test_credential_helper_error_output_never_shown(tmp_path: Path) -> None:
    helper = tmp_path / "bin" / "docker-credential-leaky"
    helper.parent.mkdir()
    helper.write_text(f"#!/bin/sh\necho 'login failed: password={PASSWORD} Secret={REFRESH}'"
                      " >&2\nexit 1\n")
    helper.chmod(0o755)
    config = docker_config(tmp_path / "cfg", {}, credsStore="leaky")
    registry = scripted(echoing(401), 'Basic realm="test"')
    try:
        error = failure(registry.address, {"DOCKER_CONFIG": str(config),
                                           "PATH": f"{tmp_path / 'bin'}:{os.environ['PATH']}"})
    finally:
        registry.stop()
    assert "docker-credential-leaky get failed (exit status 1: login failed:" in str(error)
    assert_clean(error, {PASSWORD, REFRESH})  # unknown to the client: masked by their names
