"""A base image made without an engine, and direct builds on a machine without one."""

from __future__ import annotations

import json
import os
import shutil
import struct
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.layers import Entry, write_layer
from mlflow_steps.image.push import Blob, push_image, push_index, push_manifest
from support.helpers import (
    MINIMAL_MLPROJECT,
    run_cli,
    write_codeset,
)

ENGINES = ("buildah", "docker", "dockerd", "podman")


GLIBC_LIBRARIES = ("ld-linux-x86-64.so.2", "libdl.so.2", "libgcc_s.so.1", "libm.so.6",
                   "libpthread.so.0", "librt.so.1", "libstdc++.so.6", "libz.so.1",
                   "libutil.so.1")


# What Debian's python3.11 (the test channel's conda `python`: interpreter and lib-dynload)
# links beside glibc, as its base image has them
SYSTEM_LIBRARIES = ("libbz2.so.1.0", "libcrypt.so.1", "libcrypto.so.3", "libdb-5.3.so",
                    "libexpat.so.1", "libffi.so.8", "liblzma.so.5", "libncursesw.so.6",
                    "libnsl.so.2", "libpanelw.so.6", "libreadline.so.8", "libsqlite3.so.0",
                    "libssl.so.3", "libtinfo.so.6", "libtirpc.so.3", "libuuid.so.1")


PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/usr/sbin/nologin\n"


GROUP = "root:x:0:\nshadow:x:42:\n"


def elf_needing(library: str) -> bytes:
    """A minimal x86-64 shared object whose only dynamic entry is DT_NEEDED ``library``."""
    dynstr = b"\0" + library.encode() + b"\0"
    dynamic = struct.pack("<qQqQ", 1, 1, 0, 0)  # DT_NEEDED -> dynstr[1], DT_NULL
    shstrtab = b"\0.dynstr\0.dynamic\0.shstrtab\0"
    offsets, blob = [], b""
    for part in (dynstr, dynamic, shstrtab):
        blob += b"\0" * (-(64 + len(blob)) % 8)
        offsets.append(64 + len(blob))
        blob += part
    shoff = 64 + len(blob) + (-(64 + len(blob)) % 8)
    blob += b"\0" * (shoff - 64 - len(blob))

    def section(name: int, kind: int, offset: int, size: int, link: int = 0, entsize: int = 0):
        return struct.pack("<IIQQQQIIQQ", name, kind, 0, 0, offset, size, link, 0, 8, entsize)

    sections = (section(0, 0, 0, 0) + section(1, 3, offsets[0], len(dynstr))
                + section(9, 6, offsets[1], len(dynamic), link=1, entsize=16)
                + section(18, 3, offsets[2], len(shstrtab)))
    header = (b"\x7fELF\x02\x01\x01" + b"\0" * 9
              + struct.pack("<HHIQQQIHHHHHH", 3, 62, 1, 0, 0, shoff, 0, 64, 0, 0, 64, 4, 3))
    return header + blob + sections


BASE_ENV = ("PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8")


def push_synthetic_base(client: RegistryClient, work: Path, compression: str = "gzip",
                        repository: str = "synthetic/python",
                        env: tuple[str, ...] | None = BASE_ENV) -> str:
    """Push a base made here (no engine): account files, glibc's version string and a
    python3.11 on PATH; enough for the builder to stage against, not to run (``env``
    None: a config with no Env at all)."""
    layer = write_layer(_base_entries("amd64"), _fresh(work) / "layer.tar.gz", 0, compression)
    push_image(client, repository, "3.11", _base_config(layer.diff_id, "amd64", env),
               [Blob(layer.descriptor(), path=layer.path)], work)
    return f"{client.host}/{repository}:3.11"


def push_synthetic_index(client: RegistryClient, work: Path,
                         repository: str = "synthetic/multi-python",
                         architectures: tuple[str, ...] = ("amd64", "arm64")) -> str:
    """The synthetic base for each of ``architectures`` (OCI manifests), under one tag as
    an OCI image index."""
    images = []
    for name in architectures:
        layer = write_layer(_base_entries(name), _fresh(work / name) / "layer.tar.gz", 0, "gzip")
        images.append((f"linux/{name}", push_manifest(
            client, repository, None, _base_config(layer.diff_id, name, BASE_ENV),
            [Blob(layer.descriptor(), path=layer.path)], work / name, oci=True)))
    push_index(client, repository, "3.11", images)
    return f"{client.host}/{repository}:3.11"


def _fresh(work: Path) -> Path:
    work.mkdir(parents=True, exist_ok=True)
    return work


def _base_config(diff_id: str, architecture: str, env: tuple[str, ...] | None) -> dict:
    return {"architecture": architecture, "os": "linux",
            "config": {"Env": list(env)} if env is not None else {},
            "rootfs": {"type": "layers", "diff_ids": [diff_id]}, "history": [{}]}


def _base_entries(architecture: str) -> list[Entry]:
    """The synthetic base's files for ``architecture`` (its glibc directory and loader)."""
    triplet, loader = {"amd64": ("x86_64-linux-gnu", "ld-linux-x86-64.so.2"),
                       "arm64": ("aarch64-linux-gnu", "ld-linux-aarch64.so.1")}[architecture]
    libraries = [loader, *(name for name in GLIBC_LIBRARIES if not name.startswith("ld-")),
                 *SYSTEM_LIBRARIES]
    return [Entry("etc", "dir"), Entry("etc/passwd", "file", data=PASSWD.encode(), mode=0o644),
            Entry("etc/group", "file", data=GROUP.encode(), mode=0o644),
            Entry("usr", "dir"), Entry("usr/bin", "dir"),
            Entry("usr/bin/python3.11", "file", data=b"", mode=0o755),
            Entry("usr/lib", "dir"), Entry(f"usr/lib/{triplet}", "dir"),
            Entry(f"usr/lib/{triplet}/libc.so.6", "file", mode=0o755,
                  data=b"\0GNU C Library (Test) stable release version 2.36.\n\0"),
            Entry("lib", "symlink", target="usr/lib"),
            *(Entry(f"usr/lib/{triplet}/{name}", "file", data=b"") for name in libraries)]


@pytest.fixture(scope="module")
def synthetic_base(registry, tmp_path_factory) -> str:
    return push_synthetic_base(RegistryClient(registry.address),
                               tmp_path_factory.mktemp("synthetic-base"))


@pytest.fixture(scope="module")
def no_engine(tmp_path_factory) -> dict[str, str]:
    """An environment as on a machine without engines: no engine answers, and PATH has this
    machine's tools but no engine (python3.11 too, for staging)."""
    tools = tmp_path_factory.mktemp("tools")
    for directory in ("/usr/local/bin", "/usr/bin"):
        for program in Path(directory).iterdir():
            if program.name not in ENGINES and not (tools / program.name).exists():
                (tools / program.name).symlink_to(program)
    return {**os.environ, "DOCKER_HOST": "unix:///nonexistent/docker.sock",
            "PATH": f"{Path(sys.executable).parent}:{tools}"}


WARM_REQUIREMENTS = "six==1.16.0\n"  # what most direct builds here install besides the tooling
_warm: dict[str, Path] = {}  # registry address -> its warm layer cache (made once a session)


@pytest.fixture
def warm_cache(registry, tmp_path_factory) -> Callable[..., str]:
    """Factory: ``warm_cache(cache, into=None)`` fills the steps cache ``cache`` (a test's own)
    with the layer cache of one direct build of ``WARM_REQUIREMENTS`` on a synthetic base into
    the session registry, made once a session: a test whose point is not making layers reuses
    the step tooling's (compiling and compressing them costs a build most of its time).
    ``into`` (client, repository): the layers are put there first (mounted in the session
    registry, else copied), for a build into another registry or through another address (a
    proxy). Returns ``cache`` as a string."""
    if registry.address not in _warm:
        work = tmp_path_factory.mktemp("warm-layers")
        base = push_synthetic_base(RegistryClient(registry.address), work / "base",
                                   repository="synthetic/warm-python")
        codeset = write_codeset(work / "codeset", {"MLproject": MINIMAL_MLPROJECT,
                                                   "requirements.txt": WARM_REQUIREMENTS})
        env = {**os.environ, "MLFLOW_STEPS_CACHE": str(work / "cache"),
               "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
        made = build(codeset, registry, base, "warm/layers", env=env)
        assert made.returncode == 0, made.stderr[-3000:]
        _warm[registry.address] = work / "cache" / "layers"

    def fill(cache: Path, into: tuple[RegistryClient, str] | None = None) -> str:
        shutil.copytree(_warm[registry.address], cache / "layers", dirs_exist_ok=True)
        if into:
            client, repository = into
            session = RegistryClient(registry.address)
            for entry in (cache / "layers").iterdir():
                digest = json.loads(entry.read_text())["digest"]
                if client.host == registry.address:
                    client.push_blob(repository, digest, None, mount_from="warm/layers")
                    continue
                blob = cache / "blob"
                session.blob_to_file("warm/layers", digest, blob, 1 << 30)
                client.push_blob(repository, digest, blob)
                blob.unlink()
        return str(cache)

    return fill


def build(codeset: Path, registry, base: str, repository: str, *extra: str,
          env: dict[str, str], builder: str = "direct"):
    return run_cli("build", str(codeset), "--builder", builder, "--registry", registry.address,
                   "--base-image", base, "--repository", repository, *extra, env=env)
