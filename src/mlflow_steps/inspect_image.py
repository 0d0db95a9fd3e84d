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
    sbom: dict | None = None

    @property
    def packages(self) -> list[str]:
        """The lock's requirement lines (``name==version``), without hashes or comments."""
        return [line.removesuffix("\\").strip() for line in self.lock
                if line.strip() and not line[:1].isspace() and not line.startswith(("#", "-"))]

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
            digest = self.labels.get("org.opencontainers.image.base.digest")
            lines.append(f"base       {base}" + (f" ({digest})" if digest else ""))
        packages = self.packages
        hashed = " with hashes" if any("--hash=" in line for line in self.lock) else ""
        lines.append(f"lock       {len(packages)} packages{hashed}"
                     + (f" ({self.labels.get(LABEL_PREFIX + 'lock')})" if self.lock else ""))
        lines += [f"  {line}" for line in packages]
        lines.append(f"sbom       {sbom_summary(self.sbom)}"
                     + (f" ({self.labels.get(LABEL_PREFIX + 'sbom')})" if self.sbom else ""))
        return "\n".join(lines)


def sbom_summary(sbom: dict | None) -> str:
    """'CycloneDX 1.6, N components (M with a license)' or why there is none."""
    if sbom is None:
        return "none recorded"
    components = sbom.get("components") or []
    licensed = sum(1 for c in components if isinstance(c, dict) and c.get("licenses"))
    return (f"{sbom.get('bomFormat', '?')} {sbom.get('specVersion', '?')}, "
            f"{len(components)} components ({licensed} with a license)")


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
    wanted = {key: labels.get(f"{LABEL_PREFIX}{key}", "").lstrip("/") for key in ("lock", "sbom")}
    found: dict[str, str] = {}
    for layer_digest, size in reversed(layers):  # the records are in a small top layer
        if found or not any(wanted.values()) or size > MAX_LAYER_BYTES:
            continue
        found = _members(client.blob(ref.repository, layer_digest, MAX_LAYER_BYTES),
                         {path: key for key, path in wanted.items() if path})
    lock = [line for line in found.get("lock", "").splitlines() if line.strip()]
    try:
        sbom = json.loads(found["sbom"]) if "sbom" in found else None
    except ValueError:
        raise StepError(f"{wanted['sbom']} in the image is not JSON", source=reference) from None
    return ImageRecord(str(ref), digest, labels, lock,
                       sbom if isinstance(sbom, dict) else None)


def _members(blob: bytes, paths: dict[str, str]) -> dict[str, str]:
    """The text of each of ``paths`` (path -> key) the (gzip) layer tar has, by key."""
    data = gzip.decompress(blob) if blob[:2] == b"\x1f\x8b" else blob
    texts = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(data)) as layer:
            for member in layer:
                key = paths.get(member.name.lstrip("./"))
                handle = layer.extractfile(member) if key and member.isfile() else None
                if key and handle:
                    texts[key] = handle.read().decode("utf-8", "replace")
    except tarfile.TarError:
        return {}
    return texts


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
