"""Push an image from its parts (layer blobs, config) with our registry client: blobs the
registry has are skipped, base layers are mounted across repositories where it allows that,
and the config and manifest are serialised canonically so the same parts give one digest."""

from __future__ import annotations

import datetime
import hashlib
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.layers import LAYER_MEDIA_TYPE

# Docker's schema 2 types, what `docker push` writes: every client and registry takes them
# (a registry may hide an OCI manifest from a client that does not ask for OCI).
MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
MAX_COPIED_BLOB = 4 << 30
_DOCKER_LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar+gzip": LAYER_MEDIA_TYPE,
    "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip":
        "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip",
}
# OCI's types, for images with a layer only OCI can name (zstd)
OCI_MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
OCI_INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
_OCI_LAYER_TYPES = {docker: oci for oci, docker in _DOCKER_LAYER_TYPES.items()}


@dataclass(frozen=True)
class Blob:
    """One layer of the image: its descriptor, and where its bytes are (a file here, or a
    repository of the same registry to mount it from)."""

    descriptor: dict[str, object]
    path: Path | None = None
    mount_from: str | None = None

    @property
    def digest(self) -> str:
        return str(self.descriptor["digest"])


def rfc3339(epoch: int) -> str:
    """An image config time: ``epoch`` in UTC, to the second."""
    return datetime.datetime.fromtimestamp(epoch, datetime.timezone.utc).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


def canonical(document: dict) -> bytes:
    """The bytes a JSON document is pushed as: sorted keys, no spaces."""
    return json.dumps(document, sort_keys=True, separators=(",", ":")).encode()


def manifest_for(config: bytes, layers: list[Blob], oci: bool = False) -> dict[str, object]:
    """The manifest for ``config`` and ``layers``: Docker schema 2 (OCI layer types mapped),
    or OCI when asked (``oci``: a member of an OCI index) or a layer has a type only OCI has
    (zstd)."""
    oci = oci or any(str(layer.descriptor.get("mediaType")) not in _DOCKER_LAYER_TYPES
              and str(layer.descriptor.get("mediaType")) not in _OCI_LAYER_TYPES
              for layer in layers)
    mapping = _OCI_LAYER_TYPES if oci else _DOCKER_LAYER_TYPES
    descriptors = []
    for layer in layers:
        descriptor = dict(layer.descriptor)
        media_type = str(descriptor.get("mediaType"))
        descriptor["mediaType"] = mapping.get(media_type, media_type)
        descriptors.append({k: descriptor[k] for k in ("mediaType", "digest", "size")})
    return {"schemaVersion": 2,
            "mediaType": OCI_MANIFEST_MEDIA_TYPE if oci else MANIFEST_MEDIA_TYPE,
            "config": {"mediaType": OCI_CONFIG_MEDIA_TYPE if oci else CONFIG_MEDIA_TYPE,
                       "digest": "sha256:" + hashlib.sha256(config).hexdigest(),
                       "size": len(config)},
            "layers": descriptors}


def push_image(client: RegistryClient, repository: str, tag: str, config: dict,
               layers: list[Blob], workdir: Path) -> str:
    """Upload what the registry lacks, then the config and the manifest; the digest."""
    return str(push_manifest(client, repository, tag, config, layers, workdir)["digest"])


def push_manifest(client: RegistryClient, repository: str, tag: str | None, config: dict,
                  layers: list[Blob], workdir: Path, oci: bool = False) -> dict[str, object]:
    """``push_image``, under ``tag`` or (None) by its digest alone, for an index to name;
    the manifest's descriptor (media type, digest, size)."""
    for layer in layers:
        if client.has_blob(repository, layer.digest):
            continue
        how = client.push_blob(repository, layer.digest, layer.path, mount_from=layer.mount_from)
        if how == "not mounted" and layer.mount_from:  # copy it within the registry
            copy = workdir / layer.digest.replace(":", "-")
            copy.write_bytes(client.blob(layer.mount_from, layer.digest, MAX_COPIED_BLOB))
            how = "copied from " + layer.mount_from
            client.push_blob(repository, layer.digest, copy)
            copy.unlink()
        print(f"[push] {layer.digest[:19]}: {how}", file=sys.stderr, flush=True)
    config_bytes = canonical(config)
    manifest = manifest_for(config_bytes, layers, oci)
    config_digest = str(manifest["config"]["digest"])  # type: ignore[index]
    if not client.has_blob(repository, config_digest):
        path = workdir / "config.json"
        path.write_bytes(config_bytes)
        client.push_blob(repository, config_digest, path)
    body = canonical(manifest)
    reference = tag or "sha256:" + hashlib.sha256(body).hexdigest()
    digest = client.put_manifest(repository, reference, body, str(manifest["mediaType"]))
    return {"mediaType": manifest["mediaType"], "digest": digest, "size": len(body)}


def push_index(client: RegistryClient, repository: str, tag: str,
               images: list[tuple[str, dict[str, object]]]) -> str:
    """An OCI image index of ``images`` (platform, manifest descriptor; each pushed already)
    as repository:tag; its digest."""
    index = {"schemaVersion": 2, "mediaType": OCI_INDEX_MEDIA_TYPE, "manifests": [
        {**descriptor, "platform": {"os": platform.split("/")[0],
                                    "architecture": platform.split("/")[1]}}
        for platform, descriptor in images]}
    return client.put_manifest(repository, tag, canonical(index), OCI_INDEX_MEDIA_TYPE)
