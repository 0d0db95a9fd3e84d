"""Reproducible pushes for Docker engines: the built image is saved (`docker save`), the
layers above the base are rewritten deterministically (``layers.rewrite``, clamped to the
image's epoch), history and creation times after the base are set to the epoch, and the
result is pushed with our registry client. Any engine version gives the same digest for the
same files: what BuildKit's ``rewrite-timestamp`` does, where the engine lacks it."""

from __future__ import annotations

import datetime
import json
import os
import re
import tarfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import ThreadPool
from mlflow_steps.image.layers import Layer, LayerCache, compress, rewrite
from mlflow_steps.image.push import Blob, rfc3339


@dataclass(frozen=True)
class BaseImage:
    """What is known of the base: its layers' diff_ids and creation time (from the engine),
    and, when its registry is the destination's, the blobs to mount from there."""

    diff_ids: tuple[str, ...]
    created: str
    blobs: tuple[Blob, ...] = ()


_TIME = re.compile(r"(?P<head>[^.Z+]+(?:[+-]\d\d:\d\d)?)(?:\.(?P<fraction>\d+))?"
                   r"(?P<zone>Z|[+-]\d\d:\d\d)?")


def _parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 time as docker writes it (nanoseconds, Z or an offset; naive is UTC)."""
    match = _TIME.fullmatch(text.strip())
    if not match:
        raise StepError(f"docker save wrote a time that is not RFC 3339 ({text[:40]!r})",
                        source="docker")
    fraction = (match["fraction"] or "0")[:6].ljust(6, "0")
    zone = match["zone"] or "Z"
    parsed = datetime.datetime.fromisoformat(
        f"{match['head']}.{fraction}{'+00:00' if zone == 'Z' else zone}")
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=datetime.timezone.utc)


def normalised_config(config: dict, base: BaseImage, diff_ids: list[str], epoch: int) -> dict:
    """The image config with our diff_ids and every time after the base's set to the epoch."""
    config = json.loads(json.dumps(config))
    stamp = rfc3339(epoch)
    base_created = _parse_time(base.created)
    for entry in config.get("history", []):
        if "created" in entry and _parse_time(entry["created"]) > base_created:
            entry["created"] = stamp
    config["created"] = stamp
    for volatile in ("container", "container_config", "docker_version"):
        config.pop(volatile, None)
    config["rootfs"] = {"type": "layers", "diff_ids": diff_ids}
    return config


def _read_json(archive: tarfile.TarFile, name: str) -> object:
    member = archive.extractfile(name)
    if member is None:
        raise StepError(f"docker save wrote no {name}", source="docker")
    return json.load(member)


def _layer_job(archive_path: Path, layer_name: str, out: Path, epoch: int | None) -> Layer:
    """One layer of the archive, rewritten (``epoch``) or compressed as it is (None)."""
    with tarfile.open(archive_path, "r:") as archive:
        data = archive.extractfile(layer_name)
        if data is None:
            raise StepError(f"docker save wrote no {layer_name}", source="docker")
        if epoch is None:
            return compress(data, out)
        with tarfile.open(fileobj=data, mode="r:") as layer:
            return rewrite(layer, layer.getmembers(), out, epoch)


def normalised_parts(archive_path: Path, base: BaseImage, epoch: int, workdir: Path,
                     known: LayerCache, in_registry: Callable[[str], bool]
                     ) -> tuple[dict, list[Blob]]:
    """The config and layers to push for the image `docker save` wrote at ``archive_path``
    (a layer rewritten before whose result ``in_registry`` is neither read nor rewritten)."""
    with tarfile.open(archive_path, "r:") as archive:
        manifest = _read_json(archive, "manifest.json")
        if not isinstance(manifest, list) or len(manifest) != 1:
            raise StepError("docker save wrote a manifest for other than one image",
                            source="docker")
        config = _read_json(archive, manifest[0]["Config"])
    assert isinstance(config, dict)
    layer_names: list[str] = manifest[0]["Layers"]
    diff_ids = list(config["rootfs"]["diff_ids"])
    shared = 0
    while (shared < min(len(base.diff_ids), len(diff_ids))
           and base.diff_ids[shared] == diff_ids[shared]):
        shared += 1
    if shared < len(base.diff_ids):
        raise StepError(f"the image built is not on the base image (its layer {shared + 1} "
                        "is not the base's): the base's tag moved during the build, or the "
                        "engine built for another platform; nothing was pushed",
                        source="docker")
    mounted = len(base.blobs) if shared == len(base.blobs) == len(base.diff_ids) else 0
    results: dict[int, tuple[Blob, str]] = {}
    jobs = {}
    with ThreadPool(max_workers=os.cpu_count() or 2) as pool:
        for index, name in enumerate(layer_names[mounted:], start=mounted):
            ours = index >= shared
            cached = known.get(diff_ids[index], epoch) if ours else None
            if cached and in_registry(str(cached["digest"])):
                descriptor = {k: cached[k] for k in ("mediaType", "digest", "size")}
                results[index] = (Blob(descriptor), str(cached["diff_id"]))
                continue
            out = workdir / f"layer-{index}.tar.gz"
            jobs[index] = pool.submit(_layer_job, archive_path, name, out,
                                      epoch if ours else None)
        for index, job in jobs.items():
            layer = job.result()
            if index >= shared:
                known.put(diff_ids[index], epoch, layer)
            results[index] = (Blob(layer.descriptor(), path=layer.path), layer.diff_id)
    ordered = [results[index] for index in sorted(results)]
    blobs = list(base.blobs[:mounted]) + [blob for blob, _ in ordered]
    new_diff_ids = diff_ids[:mounted] + [diff_id for _, diff_id in ordered]
    return normalised_config(config, base, new_diff_ids, epoch), blobs
