"""`mlflow-steps inspect IMAGE`: what a runtime image holds, read from the registry alone."""

from __future__ import annotations

import tarfile
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.build.direct.cuda import CUDA_LABEL
from mlflow_steps.core.bounded import decompressed, load_json, read_limited
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.hashing import env_tag
from mlflow_steps.env.spec import BuildOptions
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.reference import ImageRef

LABEL_PREFIX = "io.mlflow-steps."
MAX_LAYER_BYTES = 64 << 20  # the lock is in a small top layer; environment layers are skipped
MAX_LAYER_TAR_BYTES = 1 << 30  # what such a layer may decompress to (read as a stream)
MAX_RECORD_BYTES = 32 << 20  # a lock or an SBOM
MAX_CONFIG_BYTES = 4 << 20


@dataclass(frozen=True)
class ImageRecord:
    """An image's digest, labels and the lock it recorded."""

    reference: str
    digest: str
    labels: dict[str, str]
    lock: list[str]
    sbom: dict | None = None
    pylock: str | None = None  # PEP 751 text (pip environments)
    platform: str = "linux/amd64"  # its config's os/architecture

    @property
    def packages(self) -> list[str]:
        """The lock's requirement lines (``name==version``), without hashes or comments."""
        return [line.removesuffix("\\").strip() for line in self.lock
                if line.strip() and not line[:1].isspace() and not line.startswith(("#", "-"))]

    @property
    def env_tag(self) -> str:
        return self.labels.get(f"{LABEL_PREFIX}env-tag", "")

    def lines(self) -> list[str]:
        """The report, one line each (values as recorded: print them with
        ``terminal.report``)."""
        lines = [f"image      {self.reference}", f"digest     {self.digest}",
                 f"platform   {self.platform}"]
        names = {"env-tag": "env tag", "spec-digest": "spec", "strategy": "strategy",
                 "tooling-version": "tooling"}
        lines += [f"{title:<10} {self.labels[LABEL_PREFIX + key]}" for key, title in
                  names.items() if LABEL_PREFIX + key in self.labels]
        cuda = self.labels.get(CUDA_LABEL)
        if cuda:
            lines.append(f"cuda       {cuda} (from the wheels; the NVIDIA driver comes from the "
                         f"host: give the container GPUs)")
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
        if self.pylock is not None:
            count = sum(1 for line in self.pylock.splitlines() if line == "[[packages]]")
            part = ("" if self.labels.get(LABEL_PREFIX + "strategy") == "pip" else
                    " that pip installed; the conda packages are in the lock")
            lines.append(f"pylock     PEP 751, {count} packages{part} "
                         f"({self.labels.get(LABEL_PREFIX + 'pylock')}; --write-pylock FILE)")
        return lines


def sbom_summary(sbom: dict | None) -> str:
    """'CycloneDX 1.6, N components (M with a license)' or why there is none."""
    if sbom is None:
        return "none recorded"
    components = sbom.get("components") or []
    licensed = sum(1 for c in components if isinstance(c, dict) and c.get("licenses"))
    return (f"{sbom.get('bomFormat', '?')} {sbom.get('specVersion', '?')}, "
            f"{len(components)} components ({licensed} with a license)")


def index_platforms(reference: str, client: RegistryClient) -> tuple[str, list[str]] | None:
    """The digest and platforms (os/architecture, in order) of ``reference`` when it is an
    image index; None for an image."""
    ref = ImageRef.parse(reference)
    digest, served = client.served(ref.repository, ref.tag)
    if "manifests" not in served:
        return None
    entries = served["manifests"] if isinstance(served["manifests"], list) else []
    platforms = [f"{entry['platform'].get('os')}/{entry['platform'].get('architecture')}"
                 for entry in entries if isinstance(entry, dict)
                 and isinstance(entry.get("platform"), dict)]
    if not platforms:
        raise StepError("an image index with no platform entries", source=reference)
    return digest, platforms


def read_image(reference: str, client: RegistryClient,
               platform: str = "linux/amd64") -> ImageRecord:
    """Manifest, config labels and the recorded lock of ``reference`` (an index: its
    ``platform`` image; no pull, no engine); every read bounded, every field's type checked
    (one line when wrong)."""
    ref = ImageRef.parse(reference)
    digest, manifest = client.manifest(ref.repository, ref.tag, platform)
    config_digest, layers = _manifest_parts(manifest, reference)
    config = load_json(client.blob(ref.repository, config_digest, MAX_CONFIG_BYTES),
                       source=reference, what="the image config")
    labels = _labels(config, reference)
    if f"{LABEL_PREFIX}env-tag" not in labels:
        raise StepError("not an mlflow-steps runtime image (no io.mlflow-steps.env-tag label)",
                        source=reference)
    wanted = {key: labels.get(f"{LABEL_PREFIX}{key}", "").lstrip("/")
              for key in ("lock", "sbom", "pylock")}
    found: dict[str, str] = {}
    for layer_digest, size in reversed(layers):  # the records are in a small top layer
        if found or not any(wanted.values()) or size > MAX_LAYER_BYTES:
            continue
        found = _members(client.blob(ref.repository, layer_digest, MAX_LAYER_BYTES),
                         {path: key for key, path in wanted.items() if path}, reference)
    lock = [line for line in found.get("lock", "").splitlines() if line.strip()]
    sbom = None
    if "sbom" in found:
        sbom = load_json(found["sbom"], source=reference, what=wanted["sbom"])
        if not isinstance(sbom, dict) or not isinstance(sbom.get("components", []), list):
            raise StepError(f"{wanted['sbom']} in the image is not an SBOM (a JSON object "
                            "whose components are a list)", source=reference)
    return ImageRecord(str(ref), digest, labels, lock, sbom, found.get("pylock"),
                       f"{config.get('os', 'linux')}/{config.get('architecture', 'amd64')}")


def _manifest_parts(manifest: dict, source: str) -> tuple[str, list[tuple[str, int]]]:
    """The config digest and the (digest, size) of each layer of an image manifest."""
    try:
        config_digest = manifest["config"]["digest"]
        layers = [(layer["digest"], int(layer["size"])) for layer in manifest["layers"]]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise StepError("the manifest has no config or layers", source=source) from None
    if not isinstance(config_digest, str) or not all(
            isinstance(layer, str) for layer, _ in layers):
        raise StepError("the manifest's digests are not strings", source=source)
    return config_digest, layers


def _labels(config: object, source: str) -> dict[str, str]:
    """The config's labels (none: empty), refused unless they map strings to strings."""
    if not isinstance(config, dict):
        raise StepError("the image config is not a JSON object", source=source)
    section = config.get("config") or {}
    labels = (section.get("Labels") or {}) if isinstance(section, dict) else None
    if not isinstance(labels, dict) or not all(
            isinstance(key, str) and isinstance(value, str) for key, value in labels.items()):
        raise StepError("the image config's config.Labels is not a mapping of strings",
                        source=source)
    return labels


def _members(blob: bytes, paths: dict[str, str], source: str) -> dict[str, str]:
    """The text of each of ``paths`` (path -> key) the (compressed) layer tar has, by key;
    the layer is read as a stream, bounded in what it decompresses to and in each text."""
    texts: dict[str, str] = {}
    stream = decompressed(blob, limit=MAX_LAYER_TAR_BYTES, source=source, what="a layer")
    try:
        with tarfile.open(fileobj=stream, mode="r|") as layer:
            for member in layer:
                key = paths.get(member.name.lstrip("./"))
                handle = layer.extractfile(member) if key and member.isfile() else None
                if key and handle:
                    data = read_limited(handle, MAX_RECORD_BYTES, source=source,
                                        what=member.name)
                    texts[key] = data.decode("utf-8", "replace")
                    if len(texts) == len(paths):
                        break
    except tarfile.TarError:
        return {}
    return texts


def codeset_matches(record: ImageRecord, codeset: Path, environ: dict[str, str],
                    platforms: tuple[str, ...] = ("linux/amd64",)) -> str:
    """One line: whether ``codeset`` (on the image's base, for its ``platforms``) hashes to
    the image's env tag."""
    # the builder step loads only for a codeset comparison
    from mlflow_steps.build.step import resolve_spec

    base = record.labels.get("org.opencontainers.image.base.name")
    strategy = record.labels.get(f"{LABEL_PREFIX}strategy", "")
    options = BuildOptions(base_image=base, platforms=platforms,
                           env_strategy=strategy if strategy in ("pip", "conda") else "auto")
    spec, _ = resolve_spec(codeset, options, environ, True)
    tag = env_tag(spec)
    if tag == record.env_tag:
        return f"codeset    {codeset} hashes to {tag}: this image is its environment"
    return f"codeset    {codeset} hashes to {tag}, not {record.env_tag}: a different environment"
