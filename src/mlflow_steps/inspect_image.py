"""`mlflow-steps inspect IMAGE`: what a runtime image holds, read from the registry alone."""

from __future__ import annotations

import gzip
import io
import json
import tarfile
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.errors import StepError
from mlflow_steps.imageref import ImageRef
from mlflow_steps.registry import RegistryClient

LABEL_PREFIX = "io.mlflow-steps."
MAX_LAYER_BYTES = 64 << 20  # the lock is in a small top layer; environment layers are skipped
MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class ImageRecord:
    """An image's digest, labels and the lock it recorded."""

    reference: str
    digest: str
    labels: dict[str, str]
    lock: list[str]

    @property
    def env_tag(self) -> str:
        return self.labels.get(f"{LABEL_PREFIX}env-tag", "")

    def describe(self) -> str:
        lines = [f"image      {self.reference}", f"digest     {self.digest}"]
        names = {"env-tag": "env tag", "spec-digest": "spec", "strategy": "strategy",
                 "tooling-version": "tooling"}
        lines += [f"{title:<10} {self.labels[LABEL_PREFIX + key]}" for key, title in
                  names.items() if LABEL_PREFIX + key in self.labels]
        base = self.labels.get("org.opencontainers.image.base.name")
        if base:
            lines.append(f"base       {base}")
        lines.append(f"lock       {len(self.lock)} packages"
                     + (f" ({self.labels.get(LABEL_PREFIX + 'lock')})" if self.lock else ""))
        lines += [f"  {line}" for line in self.lock]
        return "\n".join(lines)


def read_image(reference: str, client: RegistryClient) -> ImageRecord:
    """Manifest, config labels and the recorded lock of ``reference`` (no pull, no engine)."""
    ref = ImageRef.parse(reference)
    digest, manifest = client.manifest(ref.repository, ref.tag)
    try:
        config_digest = manifest["config"]["digest"]
        layers = [(layer["digest"], int(layer["size"])) for layer in manifest["layers"]]
    except (KeyError, TypeError, ValueError):
        raise StepError("the manifest has no config or layers", source=reference) from None
    try:
        config = json.loads(client.blob(ref.repository, config_digest, MAX_CONFIG_BYTES))
        labels = dict((config.get("config") or {}).get("Labels") or {})
    except (ValueError, AttributeError, TypeError):
        raise StepError("the image config is not JSON", source=reference) from None
    if f"{LABEL_PREFIX}env-tag" not in labels:
        raise StepError("not an mlflow-steps runtime image (no io.mlflow-steps.env-tag label)",
                        source=reference)
    lock_path = labels.get(f"{LABEL_PREFIX}lock", "").lstrip("/")
    lock: list[str] = []
    for layer_digest, size in reversed(layers):
        if not lock_path or size > MAX_LAYER_BYTES:
            continue
        text = _member(client.blob(ref.repository, layer_digest, MAX_LAYER_BYTES), lock_path)
        if text is not None:
            lock = [line for line in text.splitlines() if line.strip()]
            break
    return ImageRecord(str(ref), digest, labels, lock)


def _member(blob: bytes, path: str) -> str | None:
    """``path`` from a (gzip) layer tar, or None when the layer does not have it."""
    data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as layer:
            for member in layer:
                if member.name.lstrip("./") == path and member.isfile():
                    handle = layer.extractfile(member)
                    return handle.read().decode("utf-8", "replace") if handle else None
    except tarfile.TarError:
        return None
    return None


def codeset_matches(record: ImageRecord, codeset: Path, environ: dict[str, str]) -> str:
    """One line: whether ``codeset`` (on the image's base) hashes to the image's env tag."""
    from mlflow_steps.builder import resolve_spec
    from mlflow_steps.envspec import BuildOptions
    from mlflow_steps.hashing import env_tag

    base = record.labels.get("org.opencontainers.image.base.name")
    strategy = record.labels.get(f"{LABEL_PREFIX}strategy", "")
    options = BuildOptions(base_image=base,
                           env_strategy=strategy if strategy in ("pip", "conda") else "auto")
    spec, _ = resolve_spec(codeset, options, environ, True)
    tag = env_tag(spec)
    if tag == record.env_tag:
        return f"codeset    {codeset} hashes to {tag}: this image is its environment"
    return f"codeset    {codeset} hashes to {tag}, not {record.env_tag}: a different environment"
