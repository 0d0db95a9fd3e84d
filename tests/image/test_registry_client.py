"""Registry existence checks against real docker-registry servers."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from support.faulty_proxy import FaultyProxy
from support.helpers import basic, docker_config, push_tiny_image

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.credentials import load_credentials
from mlflow_steps.image.reference import ImageRef, is_insecure


@pytest.mark.parametrize(("text", "expected"), [
    ("python:3.11-slim", ("docker.io", "library/python", "3.11-slim")),
    ("continuumio/miniconda3", ("docker.io", "continuumio/miniconda3", "latest")),
    ("127.0.0.1:5000/mlflow/trainer:abc", ("127.0.0.1:5000", "mlflow/trainer", "abc")),
    ("localhost/x", ("localhost", "x", "latest")),
    ("reg.example.com/a/b@sha256:ff", ("reg.example.com", "a/b", "sha256:ff")),
])
def test_image_reference_parsing(text: str, expected: tuple[str, str, str]) -> None:
    assert tuple(vars(ImageRef.parse(text)).values()) == expected


def test_only_loopback_or_named_registries_are_insecure() -> None:
    assert is_insecure("127.0.0.1:5000", ())
    assert is_insecure("localhost", ())
    assert not is_insecure("registry.example:5000", ())
    assert is_insecure("registry.example:5000", ("registry.example:5000",))


def test_credentials_from_docker_config(tmp_path: Path) -> None:
    env = {"DOCKER_CONFIG": str(docker_config(tmp_path / "a", {
        "https://one.example": {"auth": basic("u1", "p1")},
        "two.example": {"username": "u2", "password": "p2"},
        "three.example": {"identitytoken": "refresh-me"},
    }))}
    assert load_credentials("one.example", env).password == "p1"
    assert load_credentials("two.example", env).username == "u2"
    assert load_credentials("three.example", env).identity_token == "refresh-me"
    assert load_credentials("four.example", env) is None


def test_credential_helper_protocol(tmp_path: Path) -> None:
    helper = tmp_path / "bin" / "docker-credential-testhelper"
    helper.parent.mkdir()
    helper.write_text('#!/bin/sh\nread host\n[ "$host" = "helped.example" ] || exit 1\n'
                      'echo \'{"ServerURL":"helped.example","Username":"hu","Secret":"hs"}\'\n')
    helper.chmod(0o755)
    config = docker_config(tmp_path / "c", {}, credHelpers={"helped.example": "testhelper"})
    env = {"DOCKER_CONFIG": str(config), "PATH": f"{helper.parent}:{os.environ['PATH']}"}
    os.environ["PATH"], old = env["PATH"], os.environ["PATH"]
    try:
        creds = load_credentials("helped.example", env)
    finally:
        os.environ["PATH"] = old
    assert (creds.username, creds.password) == ("hu", "hs")


def test_plain_registry_exists_and_missing(registry) -> None:
    digest = push_tiny_image(registry.url, "probe/plain", "v1")
    client = RegistryClient(registry.address)
    assert client.manifest_digest("probe/plain", "v1") == digest
    assert client.transport.scheme == "http"  # loopback registry without TLS: plain HTTP fallback
    assert client.manifest_digest("probe/plain", "v2") is None
    assert client.manifest_digest("probe/never-pushed", "v1") is None


def test_tls_basic_auth(tls_registry, tmp_path: Path) -> None:
    digest = push_tiny_image(tls_registry.url, "probe/tls", "v1",
                             auth=("alice", "s3cret-pass"), verify=str(tls_registry.ca_file))
    good = {"DOCKER_CONFIG": str(docker_config(tmp_path / "good", {
        tls_registry.address: {"auth": basic("alice", "s3cret-pass")}}))}
    client = RegistryClient(tls_registry.address, verify=str(tls_registry.ca_file), environ=good)
    assert client.manifest_digest("probe/tls", "v1") == digest
    assert client.transport.scheme == "https"
    bad = {"DOCKER_CONFIG": str(docker_config(tmp_path / "bad", {
        tls_registry.address: {"auth": basic("alice", "wrong")}}))}
    with pytest.raises(StepError, match=r"HTTP 401.*check the credentials") as caught:
        RegistryClient(tls_registry.address, verify=str(tls_registry.ca_file),
                       environ=bad).manifest_digest("probe/tls", "v1")
    assert "wrong" not in str(caught.value)
    with pytest.raises(StepError, match="TLS failure"):
        RegistryClient(tls_registry.address, environ=good).manifest_digest("probe/tls", "v1")
    # insecure: plain HTTP is tried, and a TLS-only server's answer reported as the TLS failure
    with pytest.raises(StepError, match=r"TLS failure \(certificate verify failed.*; over "
                       "plain HTTP it answers HTTP 400, so it needs TLS"):
        RegistryClient(tls_registry.address, environ=good,
                       insecure_registries=(tls_registry.address,)).manifest_digest(
            "probe/tls", "v1")


def test_bearer_token_flow(token_registry, tmp_path: Path) -> None:
    reg, tokens = token_registry
    push_token = tokens.issue("bob", "repository:probe/token:pull,push")
    digest = push_tiny_image(reg.url, "probe/token", "v1",
                             headers={"Authorization": f"Bearer {push_token}"})
    for name, entry in {"password": {"auth": basic("bob", "bob-pass")},
                        "identity token": {"identitytoken": "refresh-123"}}.items():
        env = {"DOCKER_CONFIG": str(docker_config(tmp_path / name, {reg.address: entry}))}
        assert RegistryClient(reg.address, environ=env).manifest_digest(
            "probe/token", "v1") == digest, name
    assert {r["scope"] for r in tokens.requests} == {"repository:probe/token:pull"}
    assert {r["method"] for r in tokens.requests} == {"GET", "POST"}
    env = {"DOCKER_CONFIG": str(docker_config(tmp_path / "bad", {
        reg.address: {"auth": basic("bob", "nope")}}))}
    with pytest.raises(StepError, match="HTTP 401"):
        RegistryClient(reg.address, environ=env).manifest_digest("probe/token", "v1")


def test_retries_5xx_then_succeeds(registry) -> None:
    digest = push_tiny_image(registry.url, "probe/retry", "v1")
    proxy = FaultyProxy(registry.url, failures=2, status=503)
    try:
        client = RegistryClient(proxy.address, backoff=0.05)
        assert client.manifest_digest("probe/retry", "v1") == digest
        assert proxy.seen == 3
    finally:
        proxy.stop()


def test_persistent_5xx_fails_loudly(registry) -> None:
    proxy = FaultyProxy(registry.url, failures=100, status=500)
    try:
        with pytest.raises(StepError, match=r"^registry 127\.0\.0\.1:\d+: manifest HEAD "
                           r"http://127\.0\.0\.1:\d+/v2/probe/x/manifests/v1 answered HTTP 500"):
            RegistryClient(proxy.address, backoff=0.01, retries=2).manifest_digest("probe/x", "v1")
        assert proxy.seen == 3
    finally:
        proxy.stop()


def test_registry_down_fails_loudly() -> None:
    from devstack import free_port

    with pytest.raises(StepError, match="unreachable after 3 attempts"):
        RegistryClient(f"127.0.0.1:{free_port()}", retries=2, backoff=0.01).manifest_digest(
            "a", "b")


def test_expired_token_is_renewed_once_per_request() -> None:
    """A long build outlives the token of the first check: the next check fetches a new one."""
    from support.faulty_proxy import ScriptedServer

    issued: list[str] = []
    tokens = ScriptedServer(lambda srv, handler: (issued.append(f"tok-{len(issued) + 1}"),
                                                  srv.answer(handler, 200, json.dumps(
                                                      {"token": issued[-1]})))[-1])
    challenge = f'Bearer realm="{tokens.url}/token",service="svc"'

    def registry_script(srv, handler) -> None:
        if issued and handler.headers.get("Authorization") == f"Bearer {issued[-1]}":
            srv.answer(handler, 200, headers={"Docker-Content-Digest": "sha256:" + "a" * 64})
        else:
            srv.answer(handler, 401, headers={"WWW-Authenticate": challenge})

    registry = ScriptedServer(registry_script)
    try:
        client = RegistryClient(registry.address, budget=10)
        assert client.manifest_digest("probe/x", "v1") == "sha256:" + "a" * 64
        issued.append("tok-revoked")  # the registry now only takes a newer token
        assert client.manifest_digest("probe/x", "v1") == "sha256:" + "a" * 64
        assert issued == ["tok-1", "tok-revoked", "tok-3"]
    finally:
        registry.stop()
        tokens.stop()
