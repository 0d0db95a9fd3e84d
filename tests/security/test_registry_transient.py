"""Issue 28, point 9: transient registry failures (5xx, 429 with Retry-After, a connection
reset) are retried for every request of a push and a pull, blob uploads (POST, PATCH, PUT)
and the manifest PUT included, under the one retry policy: bounded in count and in time,
and a retried upload resends the same bytes. Permanent failures (4xx) fail at once."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from support.hostile_registry import HostileRegistry, answer, reset, retry_after
from support.images import image

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.retry import RETRIES
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.push import push_image

UPLOAD = "/blobs/uploads/"


def blob_file(tmp_path: Path, size: int) -> tuple[Path, str]:
    path = tmp_path / f"blob-{size}"
    path.write_bytes(os.urandom(size))
    return path, "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()


def test_transient_failures_of_a_push_and_a_pull_are_retried(registry, tmp_path) -> None:
    big, big_digest = blob_file(tmp_path, 3000)
    config, layers = image(tmp_path / "image")
    with HostileRegistry(registry.url) as hostile:
        hostile.on("POST", UPLOAD, answer(503))
        hostile.on("PATCH", UPLOAD, reset())  # the first chunk: reset, then 500, then stored
        hostile.on("PATCH", UPLOAD, answer(500))
        hostile.on("PUT", UPLOAD, retry_after(1))
        hostile.on("HEAD", "/blobs/", answer(502))
        hostile.on("PUT", "/manifests/", reset())
        hostile.on("PUT", "/manifests/", answer(500))
        hostile.on("GET", "/manifests/", reset())
        hostile.on("GET", "/blobs/", answer(504))
        client = RegistryClient(hostile.address, backoff=0.01)
        assert client.push_blob("transient/push", big_digest, big,
                                chunk_size=1024) == "uploaded in chunks"
        digest = push_image(client, "transient/push", "v1", config, layers, tmp_path)
        assert client.manifest("transient/push", "v1")[0] == digest
        assert client.blob("transient/push", big_digest, 4000) == big.read_bytes()
    patches = hostile.requests("PATCH", UPLOAD)
    first = [(seen.header("Content-Range"), seen.body) for seen in patches[:3]]
    assert first == [("0-1023", big.read_bytes()[:1024])] * 3  # the same chunk, resent
    assert [seen.header("Content-Range") for seen in patches[3:]] == ["1024-2047", "2048-2999"]
    puts = hostile.requests("PUT", rf"{UPLOAD}.*digest={big_digest}")
    assert len(puts) == 2 and puts[0].body == puts[1].body
    manifest_puts = hostile.requests("PUT", "/manifests/v1")
    assert len(manifest_puts) == 3 and len({seen.body for seen in manifest_puts}) == 1


@pytest.mark.parametrize(("method", "path", "status"), [
    ("PUT", "/manifests/", 400), ("POST", UPLOAD, 403), ("PATCH", UPLOAD, 416),
    ("HEAD", "/blobs/", 401)])
def test_a_permanent_failure_fails_at_once(registry, tmp_path, method: str, path: str,
                                           status: int) -> None:
    big, big_digest = blob_file(tmp_path, 3000)
    with HostileRegistry(registry.url) as hostile:
        hostile.on(method, path, answer(status, '{"errors":[{"code":"DENIED"}]}'), times=None)
        client = RegistryClient(hostile.address, backoff=0.01)
        with pytest.raises(StepError, match=f"answered HTTP {status}"):
            if method == "PUT":
                config, layers = image(tmp_path / "image")
                push_image(client, "transient/permanent", "v1", config, layers, tmp_path)
            else:
                client.has_blob("transient/permanent", big_digest)
                client.push_blob("transient/permanent", big_digest, big, chunk_size=1024)
    assert len(hostile.requests(method, path)) == 1


def test_retries_are_bounded_in_count(registry, tmp_path) -> None:
    path, digest = blob_file(tmp_path, 3000)
    with HostileRegistry(registry.url) as hostile:
        hostile.on("PATCH", UPLOAD, answer(503), times=None)
        client = RegistryClient(hostile.address, backoff=0.01)
        with pytest.raises(StepError, match=r"blob upload PATCH .* answered HTTP 503"):
            client.push_blob("transient/count", digest, path, chunk_size=1024)
    assert len(hostile.requests("PATCH", UPLOAD)) == RETRIES + 1


def test_a_retry_after_beyond_the_budget_is_not_waited_for(registry, tmp_path) -> None:
    config, layers = image(tmp_path)
    with HostileRegistry(registry.url) as hostile:
        hostile.on("PUT", "/manifests/", retry_after(3600), times=None)
        client = RegistryClient(hostile.address, budget=20)
        with pytest.raises(StepError, match="asks to retry after 3600 s, beyond what is left "
                                            "of the 20 s network budget"):
            push_image(client, "transient/budget", "v1", config, layers, tmp_path)
    assert len(hostile.requests("PUT", "/manifests/")) == 1
