"""A `docker save` archive made reproducible: base layers kept, ours rewritten once; the base
as the engine has it, or as its registry serves it."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
from dataclasses import replace
from pathlib import Path

import pytest

from mlflow_steps.build.engines.docker import CLI_ENV, DockerBackend
from mlflow_steps.build.engines.docker_archive import BaseImage, normalised_parts
from mlflow_steps.build.engines.engine import BuildRequest
from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClient, RegistryClients
from mlflow_steps.image.layers import LayerCache
from mlflow_steps.image.reference import ImageRef

EPOCH = 315_600_000


def layer_tar(files: dict[str, bytes], mtime: int) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mtime = len(data), mtime
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def saved_image(path: Path, layers: list[bytes]) -> list[str]:
    """A docker-save archive of ``layers``; their diff_ids."""
    diff_ids = ["sha256:" + hashlib.sha256(data).hexdigest() for data in layers]
    config = {"architecture": "amd64", "os": "linux", "created": "2026-11-30T10:00:00.1Z",
              "history": [{"created": "2020-01-01T00:00:00Z", "created_by": "base"},
                          {"created": "2026-11-30T10:00:00.123456789Z", "created_by": "RUN x"}],
              "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    members = {"config.json": json.dumps(config).encode(),
               "manifest.json": json.dumps([{"Config": "config.json", "Layers": [
                   f"{i}/layer.tar" for i in range(len(layers))]}]).encode()}
    members.update({f"{i}/layer.tar": data for i, data in enumerate(layers)})
    with tarfile.open(path, "w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return diff_ids


def test_base_kept_ours_rewritten_and_reused(tmp_path: Path) -> None:
    base_layer = layer_tar({"etc/os-release": b"ID=debian\n"}, mtime=1_600_000_000)
    ours = layer_tar({"opt/env/a.py": b"a = 1\n"}, mtime=1_800_000_000)
    diff_ids = saved_image(tmp_path / "image.tar", [base_layer, ours])
    base = BaseImage((diff_ids[0],), "2020-01-01T00:00:00Z")
    known = LayerCache(tmp_path / "cache")
    work = tmp_path / "first"
    work.mkdir()
    config, blobs = normalised_parts(tmp_path / "image.tar", base, EPOCH, work, known,
                                     lambda digest: False)
    assert config["rootfs"]["diff_ids"][0] == diff_ids[0]  # the base layer as it was
    assert config["rootfs"]["diff_ids"][1] != diff_ids[1]  # ours: times clamped
    assert config["created"] == "1980-01-01T18:40:00Z"
    assert [h["created"] for h in config["history"]] == ["2020-01-01T00:00:00Z",
                                                         "1980-01-01T18:40:00Z"]
    assert all(blob.path and blob.path.exists() for blob in blobs)

    again = tmp_path / "again"
    again.mkdir()
    config2, blobs2 = normalised_parts(tmp_path / "image.tar", base, EPOCH, again, known,
                                       lambda digest: digest == blobs[1].digest)
    assert config2 == config and [b.digest for b in blobs2] == [b.digest for b in blobs]
    assert blobs2[1].path is None and not list(again.iterdir())[1:]  # ours: not rewritten


def test_an_image_not_on_the_base_is_refused(tmp_path: Path) -> None:
    """The base read is not what the engine built on (its tag moved, another platform):
    nothing is pushed, rather than the base's layers rewritten as if they were ours."""
    layers = [layer_tar({"etc/os-release": b"ID=debian\n"}, 1), layer_tar({"a": b"1"}, 2)]
    saved_image(tmp_path / "image.tar", layers)
    other = BaseImage(("sha256:" + "0" * 64,), "2020-01-01T00:00:00Z")
    with pytest.raises(StepError, match=r"the image built is not on the base image \(its "
                                        r"layer 1 is not the base's\)"):
        normalised_parts(tmp_path / "image.tar", other, EPOCH, tmp_path, LayerCache(
            tmp_path / "cache"), lambda digest: False)


NO_IMAGES = '#!/bin/sh\necho "Error: No such image: $5" >&2\nexit 1\n'  # a pruned engine


def test_a_base_the_engine_never_pulled_is_read_from_its_registry(synthetic_base, registry,
                                                                  tmp_path: Path) -> None:
    """BuildKit fetches the base into a cache of its own, not the engine's images: with no
    copy in the engine, the base's layers come from its registry (checked by digest), as
    blobs to mount when that is the destination's registry."""
    docker = tmp_path / "docker"
    docker.write_text(NO_IMAGES)
    docker.chmod(0o755)
    backend = DockerBackend({**os.environ, CLI_ENV: str(docker)})
    base = ImageRef.parse(synthetic_base)
    client = RegistryClient(registry.address)
    _, manifest = client.manifest(base.repository, base.tag)
    config = json.loads(client.blob(base.repository, manifest["config"]["digest"], 1 << 20))
    request = BuildRequest(None, ImageRef(registry.address, "fresh/x", "1"), base,
                           tmp_path, RegistryClients())
    read = backend._base_image(request, backend.environ)
    assert read.diff_ids == tuple(config["rootfs"]["diff_ids"])
    assert [(blob.digest, blob.mount_from) for blob in read.blobs] == [
        (layer["digest"], base.repository) for layer in manifest["layers"]]

    elsewhere = replace(request, destination=ImageRef("other.example:5000", "fresh/x", "1"))
    assert backend._base_image(elsewhere, backend.environ) == replace(read, blobs=())
    nowhere = replace(request, base_image=ImageRef(registry.address, "never/pushed", "1"))
    with pytest.raises(StepError, match=r"^docker: cannot read the base image \S+/never/pushed:"
                                        r"1: the engine has none \(Error: No such image: \S+\) "
                                        r"and registry \S+: never/pushed:1 not found"):
        backend._base_image(nowhere, backend.environ)
