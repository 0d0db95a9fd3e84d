"""The local python base for two platforms: the session's linux/amd64 base and a linux/arm64
one from Debian's arm64 packages (unpacked without emulation), under one tag as an OCI index."""

from __future__ import annotations

import gzip
import hashlib
import shutil
from pathlib import Path

import requests
from devstack import BASE_PATH, ensure_arm64_rootfs_tar

from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.layers import LAYER_MEDIA_TYPE
from mlflow_steps.image.push import Blob, push_index, push_manifest
from mlflow_steps.image.transport import MANIFEST_TYPES

MULTIARCH_TAG = "3.11-multiarch"


def _gzipped_layer(tar: Path, out: Path) -> tuple[dict[str, object], str]:
    """``tar`` gzipped into ``out``: its descriptor and diff_id."""
    raw, packed = hashlib.sha256(), hashlib.sha256()
    with tar.open("rb") as source, out.open("wb") as sink, gzip.GzipFile(
            fileobj=sink, mode="wb", compresslevel=1, mtime=0) as zipped:
        while chunk := source.read(1 << 20):
            raw.update(chunk)
            zipped.write(chunk)
    with out.open("rb") as written:
        while chunk := written.read(1 << 20):
            packed.update(chunk)
    return ({"mediaType": LAYER_MEDIA_TYPE, "digest": f"sha256:{packed.hexdigest()}",
             "size": out.stat().st_size}, f"sha256:{raw.hexdigest()}")


def push_multiarch_base(address: str, amd64_reference: str, work: Path) -> str:
    """REGISTRY/library/python:3.11-multiarch: an index of ``amd64_reference`` (same
    repository) and the arm64 rootfs as a one-layer image; its reference."""
    repository, amd64_tag = amd64_reference.split("/", 1)[1].rsplit(":", 1)
    client = RegistryClient(address)
    work.mkdir(parents=True, exist_ok=True)
    descriptor, diff_id = _gzipped_layer(ensure_arm64_rootfs_tar(), work / "arm64.tar.gz")
    config = {"architecture": "arm64", "variant": "v8", "os": "linux",
              "config": {"Env": [f"PATH={BASE_PATH}", "LANG=C.UTF-8"], "Cmd": ["python3"]},
              "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "history": [{}]}
    arm64 = push_manifest(client, repository, None, config,
                          [Blob(descriptor, path=work / "arm64.tar.gz")], work)
    served = requests.get(f"http://{address}/v2/{repository}/manifests/{amd64_tag}",
                          headers={"Accept": ", ".join(MANIFEST_TYPES)}, timeout=30)
    served.raise_for_status()
    amd64 = {"mediaType": served.headers["Content-Type"],
             "digest": "sha256:" + hashlib.sha256(served.content).hexdigest(),
             "size": len(served.content)}
    push_index(client, repository, MULTIARCH_TAG, [("linux/amd64", amd64), ("linux/arm64", arm64)])
    shutil.rmtree(work)
    return f"{address}/{repository}:{MULTIARCH_TAG}"
