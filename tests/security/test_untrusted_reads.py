"""Issue 28, point 6: what `inspect` and `trace` read from a registry, an image or a run is
bounded (decompressed sizes, JSON depth) and type-checked, and a run tag is checked with the
image-reference grammar before any request is built from it. Each failure is one line with
exit 2 (or 1), never "internal error" or a traceback."""

from __future__ import annotations

import gzip
import json
import os
import resource
import subprocess
import sys
import tarfile

import pytest
from support.crafted import LOCK, SBOM, config, layer, run_main
from support.helpers import push_tiny_image, run_cli
from support.hostile_registry import HostileRegistry, answer, deep_json

DEEP = b"[" * 50_000 + b"]" * 50_000
MEMORY_LIMIT = 1 << 30  # address space of the inspecting process: a 4 GiB bomb cannot fit


def bomb(name: str, gib: int = 4) -> bytes:
    """A gzipped layer whose first file ``name`` holds ``gib`` GiB of zeros: a few MB of
    identical gzip members, each 1 MiB of zeros (one stream to every reader)."""
    info = tarfile.TarInfo(name)
    info.size = gib << 30
    member = gzip.compress(bytes(1 << 20), 9)
    return gzip.compress(info.tobuf(format=tarfile.USTAR_FORMAT)) + member * (gib << 10)


def assert_one_line(code: int, err: str, *words: str) -> None:
    assert code in (1, 2), err
    assert len(err.splitlines()) == 1, err
    assert "internal error" not in err and "Traceback" not in err, err
    for word in words:
        assert word in err, err


@pytest.mark.parametrize(("what", "name", "said"), [
    ("lock", LOCK, "over the 32 MiB limit"),
    ("layer", "usr/share/filler", "(decompressed)"),
])
def test_a_gzip_bomb_layer_is_refused_in_bounded_memory(registry, what, name, said) -> None:
    """A records layer of a few MB that gunzips to 4 GiB (the lock itself, or a file before
    it): one line, in a process whose address space is 1 GiB."""
    blob = bomb(name)
    assert len(blob) < 8 << 20
    image = f"{registry.address}/untrusted/bomb-{what}:1"
    push_tiny_image(registry.url, f"untrusted/bomb-{what}", "1", config=config(),
                    layers=(blob,))

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))

    result = subprocess.run([sys.executable, "-m", "mlflow_steps", "inspect", image],
                            capture_output=True, text=True, timeout=300, preexec_fn=limit,
                            check=False)
    assert_one_line(result.returncode, result.stderr, said)
    assert result.returncode == 2 and result.stdout == ""


@pytest.mark.parametrize(("case", "image_config", "layers", "said"), [
    ("deep-config", DEEP, (), "the image config nests deeper than"),
    ("deep-sbom", config(), (layer({LOCK: b"six==1.16.0\n", SBOM: DEEP}),),
     f"{SBOM} nests deeper than"),
    ("labels-a-list", config(["io.mlflow-steps.env-tag=x"]), (), "config.Labels"),
    ("label-not-text", config({"io.mlflow-steps.env-tag": ["x"]}), (), "config.Labels"),
    ("sbom-components-a-number", config(),
     (layer({LOCK: b"six==1.16.0\n", SBOM: b'{"bomFormat": "CycloneDX", "components": 5}'}),),
     "is not an SBOM"),
])
def test_deep_or_wrongly_typed_image_json_is_one_line(registry, capsys, case, image_config,
                                                      layers, said) -> None:
    push_tiny_image(registry.url, f"untrusted/{case}", "1", config=image_config,
                    layers=layers)
    code, out, err = run_main(capsys, "inspect", f"{registry.address}/untrusted/{case}:1")
    assert_one_line(code, err, said)
    assert code == 2 and out == ""


MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
INDEX_TYPE = "application/vnd.oci.image.index.v1+json"


@pytest.mark.parametrize(("case", "body", "media_type"), [
    ("deep", None, MANIFEST_TYPE),
    ("size-infinite", {"schemaVersion": 2, "config": {"digest": "sha256:" + "a" * 64},
                       "layers": [{"digest": "sha256:" + "b" * 64, "size": 1e400}]},
     MANIFEST_TYPE),
    ("index-of-numbers", {"schemaVersion": 2, "manifests": [1, "x", {"platform": "linux"}]},
     INDEX_TYPE),
])
def test_deep_or_wrongly_typed_manifest_is_one_line(capsys, case, body, media_type) -> None:
    """A registry answering a manifest nested 50,000 levels deep, or one whose fields have
    the wrong types."""
    data = json.dumps(body).replace("Infinity", "1e400").encode() if body else None
    with HostileRegistry() as hostile:
        hostile.on("GET", "/manifests/", deep_json(50_000, content_type=media_type)
                   if data is None else answer(200, data, {"Content-Type": media_type}))
        code, out, err = run_main(capsys, "inspect", f"{hostile.address}/untrusted/{case}:1")
    assert_one_line(code, err)
    assert out == ""


@pytest.fixture(scope="module")
def traced_run(mlflow_server):
    """Factory: a run on the real tracking server with ``tags``; `trace runs:/<id>/model`."""
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment = client.create_experiment("untrusted-trace")

    def trace(tags: dict[str, str], *extra: str) -> subprocess.CompletedProcess[str]:
        run = client.create_run(experiment, tags=tags)
        env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
        return run_cli("trace", f"runs:/{run.info.run_id}/model", *extra, env=env, timeout=300)

    return trace


@pytest.mark.parametrize(("tag", "image", "digest"), [
    ("mlflow_steps.image", "{host}/mlflow/../../../v2/_catalog:1", None),
    ("mlflow_steps.image", "{host}/mlflow/trainer:1?n=1", None),
    ("mlflow_steps.image_digest", "{host}/mlflow/trainer:1", "sha256:../../../v2/_catalog"),
    ("mlflow_steps.image_digest", "{host}/mlflow/trainer:1", "sha256:" + "a" * 64 + "/x"),
])
def test_a_crafted_run_tag_steers_no_registry_request(traced_run, tag, image,
                                                      digest) -> None:
    """The image a run names is checked with the image-reference grammar before `trace`
    builds a registry request from it: one line naming the tag, and the registry the tag
    names is sent nothing."""
    with HostileRegistry() as hostile:
        tags = {"mlflow_steps.env_tag": "abc123",
                "mlflow_steps.image": image.format(host=hostile.address)}
        if digest:
            tags["mlflow_steps.image_digest"] = digest
        result = traced_run(tags)
        assert hostile.seen == []
    assert_one_line(result.returncode, result.stderr, tag)
    assert result.returncode == 2
