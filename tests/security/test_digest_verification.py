"""Issue 28, point 4: everything fetched by digest is checked against that digest before use
(a manifest, an index's child, a config, a layer: what the direct builder's base, `inspect`
and `trace` read), and a push fails when the registry says it stored another manifest than
the one sent. A hostile registry in front of a real one alters what it relays."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import pytest
from support.helpers import run_cli
from support.hostile_registry import HostileRegistry, forward
from support.images import image

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.push import canonical, push_image

INDEX_TYPE = "application/vnd.oci.image.index.v1+json"
WRONG = "sha256:" + "0" * 64


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def tampered(data: bytes) -> bytes:
    """The same JSON document, other bytes: a registry serving something else."""
    return data + b"\n"


@pytest.fixture(scope="module")
def pushed(registry, tmp_path_factory) -> tuple[str, dict]:
    """security/digests:v1 (labelled as a runtime image whose lock is in its top layer):
    its digest and manifest."""
    work = tmp_path_factory.mktemp("digests")
    config, layers = image(work)
    config["config"]["Labels"] = {"io.mlflow-steps.env-tag": "v1",
                                  "io.mlflow-steps.lock": "/opt/env/a.py"}
    client = RegistryClient(registry.address)
    digest = push_image(client, "security/digests", "v1", config, layers, work)
    return digest, client.manifest("security/digests", digest)[1]


def test_a_manifest_fetched_by_digest_must_have_it(registry, pushed) -> None:
    digest, _ = pushed
    with HostileRegistry(registry.url) as hostile:
        hostile.on("GET", f"/manifests/{digest}", forward(body=tampered))
        client = RegistryClient(hostile.address)
        with pytest.raises(StepError) as failure:
            client.manifest("security/digests", digest)
        assert client.manifest("security/digests", digest)[0] == digest  # untouched: fine
    message = str(failure.value)
    served = sha256(tampered(canonical(pushed[1])))  # the bytes push_image stored, altered
    assert f"whose digest is {served}, not the {digest} asked for" in message
    assert "\n" not in message and failure.value.exit_code == 1


def test_an_index_child_must_have_the_digest_the_index_names(registry, pushed) -> None:
    digest, manifest = pushed
    child = canonical(manifest)
    index = canonical({"schemaVersion": 2, "mediaType": INDEX_TYPE, "manifests": [
        {"mediaType": manifest["mediaType"], "digest": digest, "size": len(child),
         "platform": {"os": "linux", "architecture": "amd64"}}]})
    RegistryClient(registry.address).put_manifest("security/digests", "multi", index,
                                                  INDEX_TYPE)
    with HostileRegistry(registry.url) as hostile:
        hostile.on("GET", f"/manifests/{digest}", forward(body=tampered), times=None)
        with pytest.raises(StepError, match=f"not the {digest} asked for"):
            RegistryClient(hostile.address).manifest("security/digests", "multi")


@pytest.mark.parametrize("what", ["manifest", "config", "layer"])
def test_inspect_refuses_what_does_not_match_its_digest(registry, pushed, what: str) -> None:
    """`inspect` (and `trace --lock`, which reads the image the same way) on a pinned
    reference: manifest, config and layer are each checked before use."""
    digest, manifest = pushed
    wanted = {"manifest": digest, "config": manifest["config"]["digest"],
              "layer": manifest["layers"][-1]["digest"]}[what]
    with HostileRegistry(registry.url) as hostile:
        hostile.on("GET", f"/(manifests|blobs)/{wanted}", forward(body=tampered))
        result = run_cli("inspect", f"{hostile.address}/security/digests@{digest}",
                         env=dict(os.environ), timeout=120)
    assert result.returncode == 1, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"not the {wanted} asked for" in lines[0], lines
    assert "whose digest is sha256:" in lines[0]


def test_a_manifest_put_the_registry_stores_differently_fails(registry, tmp_path) -> None:
    config, layers = image(tmp_path)
    with HostileRegistry(registry.url) as hostile:
        hostile.on("PUT", "/manifests/", forward(headers={"Docker-Content-Digest": WRONG}))
        client = RegistryClient(hostile.address)
        with pytest.raises(StepError) as failure:
            push_image(client, "security/put", "v1", config, layers, tmp_path)
        assert push_image(client, "security/put", "v1", config, layers, tmp_path)  # honest
    message = str(failure.value)
    assert f"answered Docker-Content-Digest {WRONG}, while the manifest sent has digest " \
           "sha256:" in message and failure.value.exit_code == 1


def test_without_a_docker_content_digest_the_manifest_is_re_read(registry, tmp_path) -> None:
    """A PUT answered without the header: what the registry then serves under the tag must
    be the manifest sent."""
    config, layers = image(tmp_path)
    no_digest = forward(headers={"Docker-Content-Digest": None})
    with HostileRegistry(registry.url) as hostile:
        hostile.on("PUT", "/manifests/", no_digest, times=None)
        client = RegistryClient(hostile.address)
        digest = push_image(client, "security/reread", "v1", config, layers, tmp_path)
        assert hostile.requests("HEAD", "/manifests/v1")  # it asked
        hostile.on("HEAD", "/manifests/v1", forward(headers={"Docker-Content-Digest": WRONG}))
        with pytest.raises(StepError) as failure:
            push_image(client, "security/reread", "v1", config, layers, tmp_path)
    assert f"succeeded, but v1 is then {WRONG}, while the manifest sent has digest {digest}" \
        in str(failure.value)


def test_a_pinned_base_that_does_not_match_fails_the_build(registry, codeset,
                                                           tmp_path: Path) -> None:
    """The direct builder reads a base pinned by digest: other content fails the build
    with one line naming both digests, and no step output is written."""
    from support.synthetic_base import push_synthetic_base

    base = push_synthetic_base(RegistryClient(registry.address), tmp_path / "base",
                               repository="security/base")
    client = RegistryClient(registry.address)
    digest = client.manifest_digest("security/base", "3.11")
    output = tmp_path / "out" / "image"
    with HostileRegistry(registry.url) as hostile:
        hostile.on("GET", f"/manifests/{digest}", forward(body=tampered), times=None)
        pinned = f"{hostile.address}/{base.split('/', 1)[1].split(':')[0]}@{digest}"
        result = run_cli("build", str(codeset({"requirements.txt": ""})), "--builder",
                         "direct", "--registry", hostile.address, "--base-image", pinned,
                         "--repository", "security/pinned", "--output-file", str(output),
                         env={**os.environ,
                              "MLFLOW_STEPS_CACHE": str(tmp_path / "cache")}, timeout=300)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "asked for" in line]
    assert len(errors) == 1 and f"not the {digest} asked for" in errors[0], result.stderr
    assert not output.exists()


def test_a_build_whose_manifest_the_registry_stores_differently_writes_no_output(
        registry, codeset, warm_cache, tmp_path: Path) -> None:
    """The direct builder's push: a Docker-Content-Digest other than the manifest's fails
    the step with one line, and no step output is written (its layers are the session's,
    already in the repository: the manifest is the point)."""
    from support.synthetic_base import WARM_REQUIREMENTS, push_synthetic_base

    base = push_synthetic_base(RegistryClient(registry.address), tmp_path / "base",
                               repository="security/put-base")
    output, digest_file = tmp_path / "out" / "image", tmp_path / "out" / "digest"
    cache = warm_cache(tmp_path / "cache", (RegistryClient(registry.address),
                                            "security/put-build"))
    with HostileRegistry(registry.url) as hostile:
        hostile.on("PUT", "/manifests/", forward(headers={"Docker-Content-Digest": WRONG}))
        result = run_cli("build", str(codeset({"requirements.txt": WARM_REQUIREMENTS})),
                         "--builder",
                         "direct", "--registry", hostile.address, "--base-image",
                         f"{hostile.address}/{base.split('/', 1)[1]}",
                         "--repository", "security/put-build", "--output-file", str(output),
                         "--digest-file", str(digest_file),
                         env={**os.environ, "MLFLOW_STEPS_CACHE": cache}, timeout=600)
    assert result.returncode == 1, result.stderr[-2000:]
    errors = [line for line in result.stderr.splitlines() if "Docker-Content-Digest" in line]
    assert len(errors) == 1 and f"answered Docker-Content-Digest {WRONG}" in errors[0], \
        result.stderr[-3000:]
    assert not output.exists() and not digest_file.exists()
