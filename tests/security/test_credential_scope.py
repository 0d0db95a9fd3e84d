"""Issue 28, point 2: registry credentials reach only their registry and the token endpoint it
names. Two loopback registries on different ports: one the user logged in to, one playing
the foreign host a Location, a redirect or a token endpoint points to (it records what it
receives)."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from support.helpers import basic, docker_config
from support.hostile_registry import HostileRegistry, answer, forward
from support.images import image

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.push import push_image

ALICE = ("alice", "alice-pass")
ALICE_BASIC = f"Basic {basic(*ALICE)}"


def login(tmp_path: Path, host: str, **entry: str) -> dict[str, str]:
    """An environment whose docker config holds ``entry`` (default: alice) for ``host``."""
    config = docker_config(tmp_path / "docker", {host: entry or {"auth": basic(*ALICE)}})
    return {"DOCKER_CONFIG": str(config), "MLFLOW_STEPS_NETWORK_TIMEOUT": "20"}


def blob_file(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / f"blob-{size}"
    path.write_bytes(os.urandom(size))
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_an_upload_location_on_another_host_gets_no_credentials(registry, tmp_path) -> None:
    with HostileRegistry(registry.url) as foreign, \
            HostileRegistry(registry.url, credentials=ALICE) as origin:
        origin.on("POST", "/blobs/uploads/", forward(location=foreign.url), times=None)
        client = RegistryClient(origin.address, environ=login(tmp_path, origin.address))
        config, layers = image(tmp_path / "image")
        digest = push_image(client, "scope/location", "v1", config, layers, tmp_path)
        big, big_digest = blob_file(tmp_path, 3000)
        assert client.push_blob("scope/location", big_digest, big,
                                chunk_size=1024) == "uploaded in chunks"
        assert client.manifest("scope/location", "v1")[0] == digest
    assert {seen.method for seen in foreign.seen} == {"PATCH", "PUT"}
    assert [seen.authorization for seen in foreign.seen] == [None] * len(foreign.seen)
    assert any(seen.authorization == ALICE_BASIC for seen in origin.seen)


def test_a_location_on_another_host_asking_for_credentials_gets_none(registry,
                                                                     tmp_path) -> None:
    with HostileRegistry(registry.url, credentials=("mallory", "x")) as foreign, \
            HostileRegistry(registry.url, credentials=ALICE) as origin:
        origin.on("POST", "/blobs/uploads/", forward(location=foreign.url), times=None)
        client = RegistryClient(origin.address, environ=login(tmp_path, origin.address))
        path, digest = blob_file(tmp_path, 100)
        with pytest.raises(StepError) as failure:
            client.push_blob("scope/asks", digest, path)
    message = str(failure.value)
    assert "\n" not in message and failure.value.exit_code == 1
    assert f"blob upload PUT {foreign.url}/v2/scope/asks/blobs/uploads/" in message
    assert "answered HTTP 401" in message and "another host" in message
    assert foreign.seen and all(seen.authorization is None for seen in foreign.seen)


def test_a_bearer_token_stays_with_its_registry(token_registry, tmp_path) -> None:
    registry, _ = token_registry
    with HostileRegistry(registry.url) as foreign, HostileRegistry(registry.url) as origin:
        origin.on("POST", "/blobs/uploads/", forward(location=foreign.url), times=None)
        environ = login(tmp_path, origin.address, auth=basic("bob", "bob-pass"))
        client = RegistryClient(origin.address, environ=environ)
        path, digest = blob_file(tmp_path, 100)
        with pytest.raises(StepError, match=r"answered HTTP 401.*another host"):
            client.push_blob("scope/bearer", digest, path)
    assert any((seen.authorization or "").startswith("Bearer ") for seen in origin.seen)
    assert foreign.seen and all(seen.authorization is None for seen in foreign.seen)


def test_redirects_to_another_host_or_to_plain_http_drop_credentials(registry,
                                                                     tmp_path) -> None:
    """urllib3 drops Authorization on a redirect to another scheme, host or port: an
    https -> http downgrade on the very same host and port included."""
    path, digest = blob_file(tmp_path, 100)
    RegistryClient(registry.address).push_blob("scope/redirect", digest, path)
    blob = f"/v2/scope/redirect/blobs/{digest}"
    with HostileRegistry(registry.url) as foreign, \
            HostileRegistry(registry.url, credentials=ALICE, tls=True) as origin:
        origin.on("GET", blob, answer(307, headers={"Location": foreign.url + blob}))
        client = RegistryClient(origin.address, verify=str(origin.ca_file),
                                environ=login(tmp_path, origin.address))
        assert client.blob("scope/redirect", digest, 1000) == path.read_bytes()
        assert client.transport.base_url == f"https://{origin.address}"
        origin.on("GET", blob, answer(307, headers={"Location": origin.url + blob}), times=None)
        with pytest.raises(StepError, match="answered HTTP 401"):
            client.blob("scope/redirect", digest, 1000)
    assert foreign.requests("GET", blob)
    assert all(seen.authorization is None for seen in foreign.seen)
    downgraded = [seen for seen in origin.seen if not seen.tls]
    assert downgraded and all(seen.authorization is None for seen in downgraded)
    assert any(seen.authorization == ALICE_BASIC for seen in origin.seen if seen.tls)


def test_credentials_go_to_a_plain_http_token_endpoint_only_on_an_insecure_host(
        tmp_path) -> None:
    """The registry (loopback: plain HTTP allowed) names a plain-HTTP token endpoint on
    another host that is not listed insecure: the credentials are not sent there (nothing
    listens on 127.0.0.2: a client that tried would fail with "connection refused")."""
    with HostileRegistry() as origin:
        origin.on("*", "/v2/", answer(401, headers={
            "WWW-Authenticate": 'Bearer realm="http://127.0.0.2:9/token",service="s"'}),
            times=None)
        client = RegistryClient(origin.address, environ=login(tmp_path, origin.address))
        with pytest.raises(StepError) as failure:
            client.manifest_digest("scope/realm", "v1")
    message = str(failure.value)
    assert "plain-HTTP token endpoint (http://127.0.0.2:9/token)" in message
    assert "--insecure-registries" in message and "\n" not in message


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_token_endpoint_redirect_elsewhere_gets_no_credentials(method: str,
                                                                 tmp_path) -> None:
    """GET: the Basic credentials are dropped on the redirect (urllib3); POST: the refresh
    token is in the body, which a 307 would resend, so the redirect is not followed."""
    secret = "refresh-secret-42"
    entry = {"auth": basic(*ALICE)} if method == "GET" else {"identitytoken": secret}
    with HostileRegistry() as foreign, HostileRegistry() as token, HostileRegistry() as origin:
        foreign.on("*", "/token", answer(200, '{"token": "foreign-token"}'), times=None)
        token.on("*", "/token", answer(307, headers={"Location": f"{foreign.url}/token"}),
                 times=None)
        origin.on("*", "/v2/", answer(401, headers={
            "WWW-Authenticate": f'Bearer realm="{token.url}/token",service="s"'}), times=None)
        client = RegistryClient(origin.address, environ=login(tmp_path, origin.address, **entry))
        with pytest.raises(StepError) as failure:
            client.manifest_digest("scope/token", "v1")
    assert [seen.method for seen in token.seen] == [method]
    if method == "GET":
        assert token.seen[0].authorization == ALICE_BASIC
        assert [seen.authorization for seen in foreign.seen] == [None]
    else:
        assert secret.encode() in token.seen[0].body
        assert foreign.seen == []
        assert "token endpoint POST" in str(failure.value)
        assert "answered HTTP 307" in str(failure.value)
