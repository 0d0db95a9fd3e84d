"""Pushing images from their parts with our registry client, against real registries: plain,
bearer-token, and one that does not mount across repositories; and the file-level diff."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.faulty_proxy import ScriptedServer, forward
from support.helpers import basic, docker_config
from support.images import image

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.diff import diff_images
from mlflow_steps.image.push import Blob, push_image


def test_push_read_back_skip_and_mount(registry, tmp_path: Path, capfd) -> None:
    client = RegistryClient(registry.address)
    config, layers = image(tmp_path)
    digest = push_image(client, "push/first", "v1", config, layers, tmp_path)
    served, manifest = client.manifest("push/first", "v1")
    assert served == digest
    # Docker schema 2, what `docker push` writes: a client that only knows it finds it
    assert manifest["mediaType"] == "application/vnd.docker.distribution.manifest.v2+json"
    import requests
    head = requests.head(f"{registry.url}/v2/push/first/manifests/v1", timeout=10, headers={
        "Accept": "application/vnd.docker.distribution.manifest.v2+json"})
    assert head.headers["Docker-Content-Digest"] == digest
    assert [d["digest"] for d in manifest["layers"]] == [b.digest for b in layers]
    for blob in layers:
        assert client.blob("push/first", blob.digest, 1 << 20) == blob.path.read_bytes()
    assert json.loads(client.blob("push/first", manifest["config"]["digest"], 1 << 20)) == config
    assert capfd.readouterr().err.count(": uploaded") == 2  # both layers

    assert push_image(client, "push/first", "v2", config, layers, tmp_path) == digest
    assert ": uploaded" not in capfd.readouterr().err  # the registry had every blob

    from_first = [Blob(b.descriptor, mount_from="push/first") for b in layers]
    assert push_image(client, "push/second", "v1", config, from_first, tmp_path) == digest
    assert capfd.readouterr().err.count(": mounted") == 2


def test_large_blobs_go_up_in_chunks_and_stream_down(registry, tmp_path: Path) -> None:
    import hashlib
    import os

    client = RegistryClient(registry.address)
    data = os.urandom(10_000)
    path = tmp_path / "blob"
    path.write_bytes(data)
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    assert client.push_blob("push/chunked", digest, path, chunk_size=4096) == \
        "uploaded in chunks"
    assert client.has_blob("push/chunked", digest)
    client.blob_to_file("push/chunked", digest, tmp_path / "back", 1 << 20)
    assert (tmp_path / "back").read_bytes() == data
    with pytest.raises(StepError, match="over 1000 bytes"):
        client.blob_to_file("push/chunked", digest, tmp_path / "small", 1000)
    assert not (tmp_path / "small").exists() and not list(tmp_path.glob("*.partial"))


def test_push_with_bearer_tokens_asks_for_push_and_source_pull(token_registry,
                                                                 tmp_path: Path) -> None:
    reg, tokens = token_registry
    env = {"DOCKER_CONFIG": str(docker_config(tmp_path / "auth", {
        reg.address: {"auth": basic("bob", "bob-pass")}}))}
    client = RegistryClient(reg.address, environ=env)
    config, layers = image(tmp_path / "parts")
    digest = push_image(client, "team/env", "v1", config, layers, tmp_path)
    mounted = [Blob(b.descriptor, mount_from="team/env") for b in layers]
    assert push_image(client, "team/other", "v1", config, mounted, tmp_path) == digest
    assert RegistryClient(reg.address, environ=env).manifest_digest("team/other", "v1") == digest
    scopes = {tuple(r["scopes"]) for r in tokens.requests}
    assert ("repository:team/env:pull,push",) in scopes
    assert ("repository:team/other:pull,push", "repository:team/env:pull") in scopes


def test_blobs_are_copied_where_the_registry_does_not_mount(registry, tmp_path: Path,
                                                            capfd) -> None:
    """A registry that ignores ``mount`` (it opens an upload instead): copy the blob over."""
    client = RegistryClient(registry.address)
    config, layers = image(tmp_path / "parts")
    digest = push_image(client, "copy/source", "v1", config, layers, tmp_path)

    def no_mount(server, handler) -> None:
        handler.path = handler.path.split("?")[0] if "mount=" in handler.path else handler.path
        forward(handler, registry.url, handler.body)

    proxy = ScriptedServer(no_mount)
    try:
        through = RegistryClient(proxy.address)
        sourced = [Blob(b.descriptor, mount_from="copy/source") for b in layers]
        assert push_image(through, "copy/target", "v1", config, sourced, tmp_path) == digest
    finally:
        proxy.stop()
    assert capfd.readouterr().err.count("copied from copy/source") == 2
    assert client.manifest_digest("copy/target", "v1") == digest


def test_diff_names_the_file_that_differs(registry, tmp_path: Path) -> None:
    client = RegistryClient(registry.address)
    config, layers = image(tmp_path / "a")
    push_image(client, "diff/env", "a", config, layers, tmp_path)
    changed_config, changed = image(tmp_path / "b", model=b"weights v2")
    push_image(client, "diff/env", "b", {**changed_config, "author": "x"}, changed, tmp_path)
    first, second = (client.manifest("diff/env", tag)[1] for tag in ("a", "b"))
    assert diff_images(client, "diff/env", first, first) == []
    report = diff_images(client, "diff/env", first, second)
    assert report[0] == "config: author differs"
    assert report[1].startswith("layer 2 (unknown step): 1 difference(s)")
    assert report[2:] == ["  opt/env/model.bin: content"]


@pytest.mark.parametrize("status", [400, 403])
def test_a_refused_upload_is_one_line_naming_the_endpoint(registry, tmp_path: Path,
                                                          status: int) -> None:
    from mlflow_steps.core.errors import StepError

    def refuse(server, handler) -> None:
        if handler.command == "POST":
            ScriptedServer.answer(handler, status, json.dumps({"errors": [
                {"code": "DENIED", "message": "no pushing here"}]}))
        else:
            forward(handler, registry.url, handler.body)

    proxy = ScriptedServer(refuse)
    try:
        config, layers = image(tmp_path)
        with pytest.raises(StepError, match=rf"blob upload POST http://{proxy.address}"
                           rf"/v2/x/y/blobs/uploads/ answered HTTP {status}.*no pushing here"):
            push_image(RegistryClient(proxy.address), "x/y", "v1", config, layers, tmp_path)
    finally:
        proxy.stop()
