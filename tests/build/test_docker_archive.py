"""A `docker save` archive made reproducible: base layers kept, ours rewritten once."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path

from mlflow_steps.build.engines.docker_archive import BaseImage, normalised_parts
from mlflow_steps.image.layers import LayerCache

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
