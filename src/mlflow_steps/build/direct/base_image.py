"""What the engine-free builder needs to know of a base image, read from its registry alone:
config, layers, the Python interpreters on its PATH, libc flavour and version, the shared
libraries it provides and the account files a user is added to. Read once per base digest
(its layers are kept in the cache, for registries that cannot mount them)."""

from __future__ import annotations

import gzip
import json
import posixpath
import re
import tarfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from mlflow_steps.build.direct import NotApplicable
from mlflow_steps.build.image_plan import DEFAULT_PATH
from mlflow_steps.core.cache import entry_lock
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.stepio import write_atomically
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.reference import ImageRef

MAX_BASE_LAYER = 8 << 30
MAX_CONFIG = 4 << 20
FACTS_VERSION = 2
LIBRARY_DIRS = ("lib", "lib64", "usr/lib", "usr/lib64", "usr/local/lib",
                "lib/x86_64-linux-gnu", "usr/lib/x86_64-linux-gnu",
                "lib/aarch64-linux-gnu", "usr/lib/aarch64-linux-gnu")
ACCOUNT_FILES = ("etc/passwd", "etc/group", "etc/shadow", "etc/gshadow")
_GLIBC = re.compile(rb"GNU C Library [^\n\0]*?version (\d+\.\d+)")
_PYTHON = re.compile(r"python(\d+\.\d+)")
_DPKG_PYTHON = re.compile(r"Package: python(\d+\.\d+)-minimal\n(?:[^\n]+\n)*?Version: "
                          r"(\d+\.\d+\.\d+)")


@dataclass(frozen=True)
class BaseFacts:
    """The base image as the engine-free builder sees it."""

    repository: str
    digest: str
    layers: tuple[dict, ...]  # manifest descriptors
    config: dict
    interpreters: dict[str, str]  # python minor -> interpreter path on PATH
    python_versions: dict[str, str]  # python minor -> full version, when recorded
    libc: str  # "glibc", "musl" or "unknown"
    glibc_version: str | None
    libraries: frozenset[str]  # file names in the library directories
    accounts: dict[str, dict]  # ACCOUNT_FILES present -> text, mode, uid, gid
    skeleton: dict[str, str]  # /etc/skel files -> text

    @property
    def architecture(self) -> str:
        return str(self.config.get("architecture", "amd64"))

    @property
    def platform(self) -> str:
        """``os/architecture`` (linux/arm64), as the build's platform input names it."""
        return f"{self.config.get('os', 'linux')}/{self.architecture}"


def _apply(files: dict[str, tarfile.TarInfo], member: tarfile.TarInfo) -> None:
    """One layer entry onto the file map, whiteouts included."""
    name = posixpath.normpath(member.name.lstrip("./") or ".")
    directory, base = posixpath.split(name)
    if base == ".wh..wh..opq":
        prefix = f"{directory}/"
        for key in [k for k in files if k.startswith(prefix)]:
            del files[key]
    elif base.startswith(".wh."):
        gone = posixpath.join(directory, base[4:])
        for key in [k for k in files if k == gone or k.startswith(gone + "/")]:
            del files[key]
    else:
        files[name] = member


def _implied_directories(files: dict[str, tarfile.TarInfo]) -> set[str]:
    """Directories that hold an entry (a layer need not list them itself)."""
    implied = set()
    for name in files:
        while "/" in name:
            name = name.rsplit("/", 1)[0]
            if name in implied:
                break
            implied.add(name)
    return implied


def _resolve(files: dict[str, tarfile.TarInfo], implied: set[str], path: str,
             depth: int = 0) -> str | None:
    """``path`` with symbolic links followed inside the image; None if it dangles."""
    parts = [p for p in path.split("/") if p]
    resolved: list[str] = []
    for index, part in enumerate(parts):
        candidate = "/".join([*resolved, part])
        member = files.get(candidate)
        if member is None:
            if candidate in implied:
                resolved.append(part)
                continue
            return None
        if member.issym() and depth < 20:
            target = member.linkname
            base = "" if target.startswith("/") else "/".join(resolved)
            rest = "/".join(parts[index + 1:])
            joined = posixpath.normpath(posixpath.join("/", base, target, rest))
            return _resolve(files, implied, joined, depth + 1)
        resolved.append(part)
    return "/".join(resolved)


def _environment_path(config: dict) -> list[str]:
    for entry in (config.get("config") or {}).get("Env") or []:
        if entry.startswith("PATH="):
            return [p for p in entry[5:].split(":") if p.startswith("/")]
    return DEFAULT_PATH.split(":")


def _decompressed(raw: BinaryIO) -> BinaryIO:
    """A layer file's tar stream: gunzipped (every member: tarfile's "r|gz" reads only the
    first) or as it is."""
    magic = raw.read(2)
    raw.seek(0)
    return gzip.GzipFile(fileobj=raw, mode="rb") if magic == b"\x1f\x8b" else raw


def _read_layer(path: Path, files: dict[str, tarfile.TarInfo], wanted: dict[str, bytes],
                owners: dict[str, dict]) -> None:
    with path.open("rb") as raw, _decompressed(raw) as stream, tarfile.open(
            fileobj=stream, mode="r|") as layer:  # one pass: no seeking in the gzip
        for member in layer:
            _apply(files, member)
            name = posixpath.normpath(member.name.lstrip("./") or ".")
            if member.isreg() and (
                    name in ACCOUNT_FILES or name.startswith("etc/skel/")
                    or name == "var/lib/dpkg/status"
                    or posixpath.basename(name).startswith("libc.so.6")):
                handle = layer.extractfile(member)
                wanted[name] = handle.read() if handle else b""
                owners[name] = {"mode": member.mode & 0o7777, "uid": member.uid,
                                "gid": member.gid}


def read_facts(layer_paths: list[Path], config: dict) -> dict:
    """The facts of an image from its layer files (in order) and config."""
    files: dict[str, tarfile.TarInfo] = {}
    wanted: dict[str, bytes] = {}
    owners: dict[str, dict] = {}
    for path in layer_paths:
        try:
            _read_layer(path, files, wanted, owners)
        except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
            raise NotApplicable(f"the base's layer {path.name[:19]} is not a tar (or gzipped "
                                f"tar) it can read: {exc}") from None
    implied = _implied_directories(files)
    interpreters: dict[str, str] = {}
    for directory in _environment_path(config):
        for name in sorted(files):
            if posixpath.dirname(name) == directory.strip("/"):
                match = _PYTHON.fullmatch(posixpath.basename(name))
                if match and _resolve(files, implied, name):
                    interpreters.setdefault(match[1], "/" + name)
    libraries = set()
    for name, member in files.items():
        if posixpath.dirname(name) in LIBRARY_DIRS and (member.isreg() or member.issym()):
            libraries.add(posixpath.basename(name))
    for directory in LIBRARY_DIRS:  # merged /usr: /lib -> usr/lib
        real = _resolve(files, implied, directory)
        if real and real != directory:
            libraries.update(posixpath.basename(n) for n in files
                             if posixpath.dirname(n) == real)
    libc_text = next((wanted[n] for n in sorted(wanted)
                      if posixpath.basename(n).startswith("libc.so.6") and n in files), b"")
    glibc = _GLIBC.search(libc_text)
    musl = any(n.startswith("ld-musl-") for n in libraries)
    libc = "glibc" if glibc else "musl" if musl else "unknown"
    status = wanted.get("var/lib/dpkg/status", b"").decode("utf-8", "replace")
    versions = {minor: full for minor, full in _DPKG_PYTHON.findall(status)}
    for entry in (config.get("config") or {}).get("Env") or []:
        if entry.startswith("PYTHON_VERSION="):
            full = entry.split("=", 1)[1]
            versions[".".join(full.split(".")[:2])] = full
    return {
        "interpreters": interpreters, "python_versions": versions, "libc": libc,
        "glibc_version": glibc[1].decode() if glibc else None,
        "libraries": sorted(libraries),
        "accounts": {n: {"text": wanted[n].decode("utf-8", "replace"), **owners[n]}
                     for n in ACCOUNT_FILES if n in wanted and n in files},
        "skeleton": {n: wanted[n].decode("utf-8", "replace") for n in sorted(wanted)
                     if n.startswith("etc/skel/") and n in files},
    }


def load_base(reference: str, client: RegistryClient, cache: Path,
              platform: str = "linux/amd64") -> BaseFacts:
    """The facts of the base ``reference``'s ``platform`` image (from its index, if it has
    one; its layers downloaded once, into ``cache``)."""
    ref = ImageRef.parse(reference)
    digest, manifest = client.manifest(ref.repository, ref.tag, platform)
    if "layers" not in manifest or "config" not in manifest:
        raise StepError(f"{reference} has no image manifest", source="base_image")
    facts_path = cache / "bases" / f"{digest.removeprefix('sha256:')}-v{FACTS_VERSION}.json"
    layers = tuple(manifest["layers"])
    try:
        known = json.loads(facts_path.read_text())
    except (OSError, ValueError):
        known = None
    if known is None:
        config = json.loads(client.blob(ref.repository, manifest["config"]["digest"],
                                        MAX_CONFIG))
        paths = [layer_file(client, ref.repository, layer, cache) for layer in layers]
        known = {"config": config, **read_facts(paths, config)}
        write_atomically(facts_path, json.dumps(known))  # another build may read it now
    found = f"{known['config'].get('os', 'linux')}/{known['config'].get('architecture', 'amd64')}"
    if found != platform:
        raise StepError(f"{reference} is a {found} image, not {platform} (a base for several "
                        f"platforms is an image index)", source="input", field="base_image")
    return BaseFacts(
        repository=ref.repository, digest=digest, layers=layers, config=known["config"],
        interpreters=known["interpreters"], python_versions=known["python_versions"],
        libc=known["libc"], glibc_version=known["glibc_version"],
        libraries=frozenset(known["libraries"]), accounts=known["accounts"],
        skeleton=known["skeleton"])


def layer_file(client: RegistryClient, repository: str, descriptor: dict, cache: Path) -> Path:
    """The base layer's blob, from the cache or downloaded into it (by one build at a time:
    another that needs it meanwhile waits for it)."""
    digest = str(descriptor["digest"])
    path = cache / "blobs" / digest.replace(":", "-")
    if not path.exists():
        with entry_lock(path):
            if not path.exists():
                client.blob_to_file(repository, digest, path, MAX_BASE_LAYER)
    return path


def facts_summary(facts: BaseFacts) -> str:
    """One log line."""
    return (f"base {facts.repository}@{facts.digest[:19]}: {facts.architecture}, "
            f"{facts.libc} {facts.glibc_version or ''}".rstrip()
            + f", python {', '.join(sorted(facts.interpreters))}")
