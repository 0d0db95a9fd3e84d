"""Canonical environment hash: the image tag."""

from __future__ import annotations

import hashlib
import importlib.util
import json
from functools import cache
from pathlib import Path

from mlflow_steps.env.spec import EnvSpec

TAG_LENGTH = 32
# The time of every file and history entry of an image built reproducibly: one constant
# (never the wall clock), so a step whose inputs did not change is the same layer in every
# environment; 1980-01-01, the earliest time a zip archive (a wheel) can hold.
SOURCE_DATE_EPOCH = 315532800
PACKAGE_DIR = Path(__file__).resolve().parents[1]
TEMPLATES_DIR = PACKAGE_DIR / "build" / "templates"


# What trainer images do not carry (the tracking server, the workflow runner and their
# commands): editing them must not change environment tags.
NOT_IN_IMAGES = ("server", "workflow", "cli/server.py", "cli/workflow.py")


def tooling_files() -> list[Path]:
    """The package files baked into trainer images: tooling source and templates."""
    sources = [path for path in sorted(PACKAGE_DIR.rglob("*.py"))
               if not path.relative_to(PACKAGE_DIR).as_posix().startswith(NOT_IN_IMAGES)]
    return sources + sorted(TEMPLATES_DIR.glob("*.j2"))


def uv_version() -> str:
    """The installed uv's version: the name of its dist-info directory beside the package,
    else importlib.metadata (whose import alone costs the skip path ~15 ms)."""
    spec = importlib.util.find_spec("uv")
    if spec is not None and spec.origin:
        found = list(Path(spec.origin).parent.parent.glob("uv-*.dist-info"))
        if len(found) == 1:
            return found[0].name.removeprefix("uv-").removesuffix(".dist-info")
    from importlib.metadata import version  # only when uv's dist-info is not beside it

    return version("uv")


@cache
def template_version() -> str:
    """Digest of the Dockerfile templates, the tooling source baked into images and the
    version of uv that installs them."""
    digest = hashlib.sha256(f"uv {uv_version()}\0".encode())
    for path in tooling_files():
        digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode() + b"\0")
        digest.update(path.read_bytes().replace(b"\r\n", b"\n") + b"\0")
    return digest.hexdigest()[:16]


def canonical_json(data: object) -> str:
    """Deterministic JSON: sorted keys, no whitespace, UTF-8 kept."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def spec_digest(spec: EnvSpec) -> str:
    """sha256 of the canonical spec (recorded in the image's labels)."""
    payload = canonical_json(spec.canonical(template_version()))
    return "sha256:" + hashlib.sha256(payload.encode()).hexdigest()


def env_tag(spec: EnvSpec) -> str:
    """The spec digest, truncated to a registry-friendly tag."""
    return spec_digest(spec).removeprefix("sha256:")[:TAG_LENGTH]
