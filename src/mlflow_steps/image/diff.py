"""What differs between two pushed images, file by file: the report of
`build --check-reproducible` (registry only, no engine)."""

from __future__ import annotations

import hashlib
import tarfile
from dataclasses import dataclass

from mlflow_steps.core.bounded import decompressed, load_json
from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClient

MAX_LAYER_BYTES = 2 << 30
MAX_LAYER_TAR_BYTES = 16 << 30  # what a layer may decompress to (read as a stream)
MAX_CONFIG_BYTES = 4 << 20
_CHUNK = 1 << 20
SHOWN_PER_LAYER = 20


@dataclass(frozen=True)
class Entry:
    """What a layer says about one path."""

    kind: str
    mode: int
    owner: tuple[int, int]
    mtime: int
    content: str  # sha256 of a file's bytes, a link's target, or ""

    def differences(self, other: Entry) -> list[str]:
        names = ("kind", "mode", "owner", "mtime", "content")
        return [name for name in names if getattr(self, name) != getattr(other, name)]


def layer_entries(blob: bytes, source: str) -> dict[str, Entry]:
    """Every path of a (compressed) layer with what it holds, read as a stream (bounded in
    what it decompresses to)."""
    entries = {}
    stream = decompressed(blob, limit=MAX_LAYER_TAR_BYTES, source=source, what="a layer")
    try:
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            for member in tar:
                content = member.linkname
                if member.isreg():
                    handle = tar.extractfile(member)
                    digest = hashlib.sha256()
                    while handle and (chunk := handle.read(_CHUNK)):
                        digest.update(chunk)
                    content = digest.hexdigest()
                entries[member.name] = Entry(str(member.type, "ascii", "replace"),
                                             member.mode, (member.uid, member.gid),
                                             int(member.mtime), content)
    except tarfile.TarError as exc:
        raise StepError(f"a layer is not a tar archive ({exc})", source=source) from None
    return entries


def _config_differences(first: dict, second: dict) -> list[str]:
    keys = sorted(set(first) | set(second))
    return [f"config: {key} differs" for key in keys
            if key != "rootfs" and first.get(key) != second.get(key)]


def diff_images(client: RegistryClient, repository: str, first: dict, second: dict) -> list[str]:
    """One line per difference between two image manifests of ``repository`` (empty when
    the images are the same bytes)."""
    lines: list[str] = []
    config_a, config_b = (_config(client, repository, m) for m in (first, second))
    lines += _config_differences(config_a, config_b)
    layers_a, layers_b = first["layers"], second["layers"]
    if len(layers_a) != len(layers_b):
        lines.append(f"{len(layers_a)} layers against {len(layers_b)}")
    for index, (a, b) in enumerate(zip(layers_a, layers_b, strict=False)):
        if a["digest"] == b["digest"]:
            continue
        history = _history_for(config_a, index)
        entries_a = layer_entries(client.blob(repository, a["digest"], MAX_LAYER_BYTES),
                                  repository)
        entries_b = layer_entries(client.blob(repository, b["digest"], MAX_LAYER_BYTES),
                                  repository)
        found = []
        for path in sorted(set(entries_a) | set(entries_b)):
            if path not in entries_a or path not in entries_b:
                found.append(f"{path}: only in {'first' if path in entries_a else 'second'}")
            elif entries_a[path] != entries_b[path]:
                found.append(f"{path}: {', '.join(entries_a[path].differences(entries_b[path]))}")
        if not found:
            found = ["same files; the archives differ (order or headers)"]
        lines.append(f"layer {index + 1} ({history}): {len(found)} difference(s)")
        lines += [f"  {line}" for line in found[:SHOWN_PER_LAYER]]
        if len(found) > SHOWN_PER_LAYER:
            lines.append(f"  ... and {len(found) - SHOWN_PER_LAYER} more")
    return lines


def _config(client: RegistryClient, repository: str, manifest: dict) -> dict:
    """An image's config (a JSON object, bounded in size and depth)."""
    config = load_json(client.blob(repository, manifest["config"]["digest"], MAX_CONFIG_BYTES),
                       source=repository, what="an image config")
    if not isinstance(config, dict):
        raise StepError("an image config is not a JSON object", source=repository)
    return config


def _history_for(config: dict, layer_index: int) -> str:
    """The build step that made a layer (history entries that made no layer skipped)."""
    history = config.get("history")
    made = [h for h in history if isinstance(h, dict) and not h.get("empty_layer")
            ] if isinstance(history, list) else []
    if layer_index < len(made):
        text = " ".join(str(made[layer_index].get("created_by", "")).split())
        return text[:80] + ("..." if len(text) > 80 else "")
    return "unknown step"
