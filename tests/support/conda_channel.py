"""A real local conda channel, built from nothing but PyPI wheels and Debian's python3.11 debs.

No conda binary and no conda channel are reachable from the test machines, so tests that
solve, lock or install conda environments use this channel instead of conda-forge. It holds
real packages that py-rattler solves and installs:

- ``python 3.11.2`` (linux-64), repackaged from Debian bookworm's ``python3.11-minimal``,
  ``libpython3.11-minimal``, ``libpython3.11-stdlib`` and ``python3.11`` debs in the conda
  prefix layout (``bin/python3.11``, ``bin/python3``, ``bin/python``, ``lib/python3.11/...``).
  Debian's interpreter finds its prefix from its own location, so it works from any prefix.
  Two Debian patches are undone so that it behaves like conda's python:
  ``<prefix>/lib/python3.11/site-packages`` is on ``sys.path`` (through a
  ``sitecustomize.py``: Debian's ``site`` is frozen into the binary, so patching site.py alone
  does nothing) and ``sysconfig``'s default scheme is ``posix_prefix`` (pip installs there,
  not into ``<prefix>/local``); Debian's ``EXTERNALLY-MANAGED`` marker is dropped.
  The interpreter links the *system's* shared libraries, as Debian's python3.11 does, so the
  environment needs them from the base image: ``libexpat1`` and ``zlib1g`` to start at all,
  ``libssl3`` (ssl, hashlib), ``libsqlite3-0`` (sqlite3), ``libffi8`` (ctypes), ``libbz2-1.0``,
  ``liblzma5``, ``libuuid1``, ``libcrypt1``, ``libdb5.3``, ``libncursesw6``/``libtinfo6``,
  ``libreadline8``, ``libnsl2``/``libtirpc3`` for the corresponding optional modules. Any image
  that has Debian's own ``python3.11`` (the project's python base does) has them all; a
  minimal bookworm (debootstrap minbase) lacks libexpat1, libssl3 and libsqlite3-0 of those
  (see ``PYTHON_SYSTEM_LIBRARIES``). ``ensurepip`` carries CPython 3.11.2's own pip and
  setuptools wheels (from python3.11-venv's module plus PyPI), so ``python -m venv`` works.
  Not included: byte-code (compiled on first import), C headers (python3.11-dev: sdists with
  C extensions do not build), tkinter, lib2to3, the full distutils (python3-distutils).
- ``python_abi 3.11`` (``*_cp311``), as conda-forge publishes it.
- ``pip``, ``six`` (two versions) and ``packaging`` as ``noarch: python`` packages made from
  their PyPI wheels (``site-packages/...`` paths plus ``info/link.json`` with the entry points,
  so the installer relocates them into ``lib/python3.11/site-packages`` and writes
  ``bin/pip``). Like conda-forge's noarch builds they depend on ``python`` with the wheel's
  ``Requires-Python`` only, not on ``python_abi``.
- ``markupsafe`` for linux-64, made from its cp311 manylinux wheel (a compiled extension),
  depending on ``python >=3.11,<3.12.0a0`` and ``python_abi 3.11.* *_cp311`` as conda-forge's
  builds do.
- ``probe-data 1.0`` (``noarch: generic``), a package with no Python in it, as
  ``ca-certificates`` or ``tzdata`` are: a data file the archive carries with mode 0600 (as
  some archives do) and a shell script ``bin/probe-data`` that prints it.

The channel is laid out as ``<root>/conda-forge/{noarch,linux-64}/`` and indexed with
``rattler.index.index_fs``, so an *unmodified* environment file that names ``conda-forge``
resolves against it once the channel alias is ``<root>`` (``LocalChannel.alias_url``)::

    from rattler import Channel, ChannelConfig, solve
    config = ChannelConfig(channel_alias=channel.alias_url)
    records = await solve([Channel("conda-forge", config)], ["python=3.11", "six"],
                          platforms=["linux-64", "noarch"])

or, keeping the default alias (records then carry the real conda-forge URLs, as a lock file
would), through a mirror mapping served over HTTP (``serve_channel``)::

    from rattler import Client, Gateway
    from rattler.networking import MirrorMiddleware
    client = Client([MirrorMiddleware({"https://conda.anaconda.org/conda-forge":
                                       [f"{url}/conda-forge"]})])
    records = await solve(["conda-forge"], specs, gateway=Gateway(client=client), ...)
    await install(records, prefix, client=client)

``write_channel_config`` writes both as files (a ``.condarc`` with ``channel_alias`` and a
rattler/pixi ``config.toml`` with ``[mirrors]``). A mirror must be an HTTP URL: rattler's
client does not fetch a ``file://`` mirror ("URL scheme is not allowed").

Built packages are cached under ``$MLFLOW_STEPS_CACHE/conda-channel/<key>`` (default
``~/.cache/mlflow-steps``), keyed by this file's content and the exact debs apt would fetch, so
only the first session pays for downloading and packing (about 15 s; then about 1.5 s, mostly
``apt-get --print-uris``).

py-rattler sometimes aborts the Python process at interpreter exit ("Fatal Python error:
PyGILState_Release: thread state ... must be current when releasing", runtime finalizing; about
1 run in 10 after a solve), so every rattler call here runs in a child process that ends
with ``os._exit`` after flushing its output (``run_rattler``); pytest's own process never
imports rattler.
"""

from __future__ import annotations

import base64
import bz2
import contextlib
import hashlib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from email.parser import HeaderParser
from pathlib import Path
from typing import Any

import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name, parse_wheel_filename

from mlflow_steps.core.bounded import file_sha256
from mlflow_steps.image.platforms import CONDA_SUBDIRS, MACHINES

CACHE = (Path(os.environ.get("MLFLOW_STEPS_CACHE", Path.home() / ".cache" / "mlflow-steps"))
         / "conda-channel")
CHANNEL_NAME = "conda-forge"
DEFAULT_ALIAS = "https://conda.anaconda.org/"

PYTHON_VERSION = "3.11"
PYTHON_ABI = "cp311"
PYTHON_DEBS = ("python3.11-minimal", "libpython3.11-minimal", "libpython3.11-stdlib", "python3.11",
               "python3.11-venv")  # the last one for ensurepip
# What the interpreter and its lib-dynload modules link from the base system (ldd), by module.
# A `debootstrap --variant=minbase bookworm` root has all but libexpat1 (without which the
# interpreter does not start), libssl3, libsqlite3-0, libncursesw6, libreadline8 and
# libnsl2/libtirpc3 (checked in a chroot). dbm.gnu would need Debian's python3-gdbm (absent).
PYTHON_SYSTEM_LIBRARIES = {
    "interpreter": ("libc6", "libexpat1", "zlib1g"),
    "ssl/hashlib": ("libssl3",),
    "sqlite3": ("libsqlite3-0",),
    "ctypes": ("libffi8",),
    "bz2/lzma/uuid/crypt/dbm": ("libbz2-1.0", "liblzma5", "libuuid1", "libcrypt1", "libdb5.3"),
    "curses/readline": ("libncursesw6", "libtinfo6", "libreadline8"),
    "nis": ("libnsl2", "libtirpc3"),
}
# (requirement, sha256 of the wheel): pinned so the cache key names the packages' content.
WHEELS = (
    ("pip==26.3", "f3b60b20ffaadd4415ed7957212a38ac63fa4c5fa375bd0f4a797777940fad13"),
    ("six==1.16.0", "8abb2f1d86890a2dfb989f9a77cfcfd3e47c2a354b01111771326f8aa26e0254"),
    ("six==1.17.0", "4721f391ed90541fddacab5acf947aa0d3dc7d27b2e1e8eda2be8970586c3274"),
    ("packaging==26.4", "81383611a09c1bc0b08b76e0fd5829d7c6824c65b27a6aee339da133f4233ea2"),
    ("markupsafe==3.0.4", "6da83a088f8ef93b2d483a8232a4dbf4d69d3d8496b568a03c56becac43e1808"),
)
# The linux-aarch64 packages of a channel built with arm64 debs (``build_channel``).
AARCH64_WHEELS = (
    ("markupsafe==3.0.4", "849dd2bb0e5e4ab2b71c7191726a4a8d5aa8a610daa584728cbee0b710ddc4ef"),
)
SUBDIR_MACHINES = {subdir: MACHINES[platform] for platform, subdir in CONDA_SUBDIRS.items()}
# CPython 3.11.2's own ensurepip wheels (Debian takes them from /usr/share/python-wheels),
# bundled in ensurepip/_bundled so that `python -m venv` works in the environment.
ENSUREPIP_WHEELS = (
    ("pip==22.3.1", "908c78e6bc29b676ede1c4d57981d490cb892eb45cd8c214ab6298125119e077"),
    ("setuptools==65.5.0", "f62ea9da9ed6289bfe868cd6845968a2c854d1427f8548d52cae02a42b4f0356"),
)
# Text files that name the build prefix carry this; the installer replaces it with the prefix.
PLACEHOLDER = "/opt/mlflow-steps-conda-build/_placehold_placehold_placehold_placehold_env"
SUBPROCESS_TIMEOUT = 600
SITECUSTOMIZE = '''"""Conda layout for Debian's python3.11 (tests/support/conda_channel.py)

Debian's `site`, frozen into the interpreter, adds <prefix>/lib/python3.11/site-packages
only in virtual environments; add it (and its .pth files) as conda's python does.
"""
import os
import site
import sys

if sys.prefix == sys.base_prefix:
    _version = "python%d.%d" % sys.version_info[:2]
    site.addsitedir(os.path.join(sys.prefix, "lib", _version, "site-packages"))
    _debian_getsitepackages = site.getsitepackages

    def getsitepackages(prefixes=None):
        found = _debian_getsitepackages(prefixes)
        for prefix in reversed(prefixes if prefixes is not None else site.PREFIXES):
            path = os.path.join(prefix, "lib", _version, "site-packages")
            if path not in found:
                found.insert(0, path)
        return found

    site.getsitepackages = getsitepackages
'''


@dataclass(frozen=True)
class LocalChannel:
    """A built channel: ``root`` is the channel alias, ``root/conda-forge`` the channel."""

    root: Path
    packages: tuple[str, ...] = field(default=())  # subdir/file names of the archives
    name: str = CHANNEL_NAME

    @property
    def path(self) -> Path:
        return self.root / self.name

    @property
    def alias_url(self) -> str:
        """The channel alias under which ``conda-forge`` is this channel (ends with '/')."""
        return self.root.as_uri() + "/"

    @property
    def url(self) -> str:
        return self.path.as_uri()


# --------------------------------------------------------------------------- rattler child


_CHILD_PRELUDE = """
import asyncio, json, os, sys, traceback
def _emit(value):
    sys.stdout.write("\\n__RATTLER_RESULT__" + json.dumps(value) + "\\n")
try:
    PAYLOAD = json.loads(sys.argv[1])
"""
_CHILD_EPILOGUE = """
    _emit(asyncio.run(main(PAYLOAD)))
except BaseException:
    traceback.print_exc()
    sys.stdout.flush(); sys.stderr.flush()
    os._exit(1)
sys.stdout.flush(); sys.stderr.flush()
os._exit(0)
"""


def run_rattler(code: str, payload: Any = None, *, timeout: float = SUBPROCESS_TIMEOUT,
                env: dict[str, str] | None = None) -> Any:
    """Run ``async def main(payload)`` (defined in ``code``) in a child Python; return its result.

    The result must be JSON-serialisable. The child ends with ``os._exit`` right after flushing,
    because py-rattler can abort the interpreter during finalisation; a failure raises
    ``RuntimeError`` with the child's stderr.
    """
    body = "\n".join("    " + line for line in code.strip("\n").splitlines())
    script = _CHILD_PRELUDE + body + _CHILD_EPILOGUE
    proc = subprocess.run([sys.executable, "-c", script, json.dumps(payload)],
                          capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})
    marker = "__RATTLER_RESULT__"
    lines = [line for line in proc.stdout.splitlines() if line.startswith(marker)]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"rattler child failed (exit {proc.returncode}):\n"
                           f"{proc.stderr[-4000:]}\n{proc.stdout[-2000:]}")
    return json.loads(lines[-1][len(marker):])


_CHANNELS_CODE = """
from rattler import Channel, ChannelConfig, Client, Config, Gateway
from rattler.networking import MirrorMiddleware
def _sources(payload):
    channel_config = ChannelConfig(channel_alias=payload.get("alias") or
                                   "https://conda.anaconda.org/")
    if payload.get("config"):
        config = Config.load_from_files([payload["config"]])
        client = Client.from_config(config)
        gateway = Gateway.from_config(config, cache_dir=payload["repodata_cache"], client=client)
    else:
        mirrors = payload.get("mirrors")
        client = Client([MirrorMiddleware(mirrors)]) if mirrors else None
        gateway = Gateway(cache_dir=payload["repodata_cache"], client=client)
    return [Channel(name, channel_config) for name in payload["channels"]], gateway, client
def _record(r):
    data = json.loads(r.to_json())
    data.update(url=r.url, channel=r.channel, file_name=r.file_name)
    return data
"""

_SOLVE_CODE = _CHANNELS_CODE + """
from rattler import solve, install
async def main(payload):
    channels, gateway, client = _sources(payload)
    records = await solve(channels, payload["specs"], gateway=gateway,
                          platforms=payload["platforms"])
    if payload.get("prefix"):
        await install(records, payload["prefix"], cache_dir=payload.get("package_cache"),
                      client=client, show_progress=False)
    return [_record(r) for r in records]
"""


def solve(channel: LocalChannel | None, specs: list[str], *,
          prefix: str | os.PathLike | None = None, channels: list[str] | None = None,
          platforms: tuple[str, ...] = ("linux-64", "noarch"),
          alias: str | None = None, mirrors: dict[str, list[str]] | None = None,
          config: str | os.PathLike | None = None,
          cache_dir: str | os.PathLike | None = None) -> list[dict]:
    """Solve ``specs`` (and install them into ``prefix`` if given) in a child process.

    By default ``conda-forge`` is ``channel`` through its alias; pass ``alias`` (e.g. an HTTP
    URL from ``serve_channel``), ``mirrors`` or a rattler ``config`` file with ``[mirrors]``
    (both with the default alias, so records keep conda-forge's URLs) to reach it otherwise.
    Returns the solved records as dicts (repodata fields plus ``url``, ``channel``,
    ``file_name``). ``cache_dir`` holds the repodata and package caches (default: a temporary
    directory, so nothing of the user's rattler cache is read or written).
    """
    with contextlib.ExitStack() as stack:
        if cache_dir is None:
            cache_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="rattler-cache-"))
        if alias is None and mirrors is None and config is None:
            if channel is None:
                raise ValueError("solve needs a channel, an alias or mirrors")
            alias = channel.alias_url
        payload = {
            "specs": list(specs), "channels": channels or [CHANNEL_NAME],
            "platforms": list(platforms), "alias": alias, "mirrors": mirrors,
            "config": str(config) if config is not None else None,
            "prefix": str(prefix) if prefix is not None else None,
            "repodata_cache": str(Path(cache_dir) / "repodata"),
            "package_cache": str(Path(cache_dir) / "pkgs"),
        }
        return run_rattler(_SOLVE_CODE, payload)


def conda_lock_yaml(records: dict[str, list[dict]]) -> str:
    """A conda-lock v1 lockfile (as conda-lock writes it) of each conda subdir's ``records``."""
    packages = [{"name": r["name"], "version": r["version"], "manager": "conda",
                 "platform": subdir, "dependencies": {}, "url": r["url"],
                 "hash": {"md5": r["md5"], "sha256": r["sha256"]}, "category": "main",
                 "optional": False} for subdir, solved in records.items() for r in solved]
    return yaml.safe_dump({"version": 1, "metadata": {
        "content_hash": {subdir: "0" * 64 for subdir in records},
        "channels": [{"url": "conda-forge", "used_env_vars": []}],
        "platforms": list(records), "sources": ["environment.yml"]}, "package": packages})


# a PyPI wheel for locks' PyPI part: name, version, URL, sha256
IDNA = ("idna", "3.7", "https://files.pythonhosted.org/packages/e5/3e/"
        "741d8c82801c347547f8a2a06aa57dbb1992be9e948df2ea0eda2c8b79e8/idna-3.7-py3-none-any.whl",
        "82fee1fc78add43492d3a1898bfa6d8a904cc97d8427f683ed8e798d07761aa0")
_PIXI_LOCK_CODE = _CHANNELS_CODE + """
from rattler import LockChannel, LockFile, LockPlatform, solve
async def main(payload):
    channels, gateway, client = _sources(payload)
    platforms = [LockPlatform(name) for name in payload["platforms"]]
    lock = LockFile(platforms)
    lock.set_channels("default", [LockChannel("https://conda.anaconda.org/conda-forge/")])
    solved = []
    for platform in platforms:
        records = await solve(channels, payload["specs"], gateway=gateway,
                              platforms=[platform.name, "noarch"])
        for record in records:
            lock.add_conda_package("default", platform, record)
        for name, version, url, _ in payload["pypi"]:
            lock.add_pypi_package("default", platform, name, version, url)
        solved += [_record(r) for r in records]
    lock.to_path(payload["out"])
    return solved
"""


def write_pixi_lock(channel: LocalChannel, specs: list[str], out: Path, *,
                    pypi: tuple[tuple[str, str, str, str], ...] = (),
                    platforms: tuple[str, ...] = ("linux-64",)) -> list[dict]:
    """A pixi.lock (rattler's lock format, as pixi writes it) of ``specs`` solved against
    ``channel`` for each of ``platforms`` (conda subdirs), with PyPI packages ``(name,
    version, url, sha256)`` (their sha256 added as pixi records it); returns the conda
    records, platform after platform."""
    with tempfile.TemporaryDirectory(prefix="rattler-cache-") as cache:
        records = run_rattler(_PIXI_LOCK_CODE, {
            "specs": list(specs), "channels": [CHANNEL_NAME], "alias": channel.alias_url,
            "repodata_cache": str(Path(cache) / "repodata"), "platforms": list(platforms),
            "pypi": [list(p) for p in pypi], "out": str(out)})
    lock = yaml.safe_load(out.read_text())
    hashes = {url: sha256 for _, _, url, sha256 in pypi}
    for package in lock["packages"]:
        if package.get("pypi") in hashes:
            package["sha256"] = hashes[package["pypi"]]
    out.write_text(yaml.safe_dump(lock, sort_keys=False))
    return records


def create_environment(channel: LocalChannel, specs: list[str], prefix: str | os.PathLike,
                       **kwargs: Any) -> list[dict]:
    """Solve ``specs`` against ``channel`` and install them into ``prefix`` (a child process)."""
    return solve(channel, specs, prefix=prefix, **kwargs)


_INDEX_CODE = """
from rattler.index import index_fs
async def main(payload):
    await index_fs(payload["channel"], write_zst=False, write_shards=False, force=True)
    return True
"""


def index_channel(channel_dir: Path) -> None:
    """Write ``repodata.json`` for every subdir of ``channel_dir`` (rattler, in a child)."""
    run_rattler(_INDEX_CODE, {"channel": str(channel_dir)})


# --------------------------------------------------------------------------- package writing


@dataclass
class _Payload:
    """Files of one conda package, staged in ``root``."""

    root: Path
    placeholders: set[str] = field(default_factory=set)  # relative paths of text files


def _walk(root: Path) -> list[Path]:
    out = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath)
        for name in dirnames:
            if (base / name).is_symlink():
                out.append(base / name)
        out.extend(base / name for name in filenames)
    return sorted(out, key=lambda p: p.relative_to(root).as_posix())


def _write_package(payload: _Payload, index: dict, out_dir: Path, *,
                   link: dict | None = None) -> Path:
    """Write ``<name>-<version>-<build>.tar.bz2`` with ``info/`` made from ``payload``."""
    info = payload.root / "info"
    if info.exists():
        raise ValueError(f"payload already has info/: {payload.root}")
    files = _walk(payload.root)
    entries = []
    for path in files:
        rel = path.relative_to(payload.root).as_posix()
        if path.is_symlink():
            entries.append({"_path": rel, "path_type": "softlink"})
            continue
        entry = {"_path": rel, "path_type": "hardlink", "sha256": file_sha256(path),
                 "size_in_bytes": path.stat().st_size}
        if rel in payload.placeholders:
            entry.update(prefix_placeholder=PLACEHOLDER, file_mode="text")
        entries.append(entry)
    info.mkdir()
    (info / "index.json").write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")
    (info / "paths.json").write_text(json.dumps({"paths": entries, "paths_version": 1}, indent=2)
                                     + "\n")
    (info / "files").write_text("".join(e["_path"] + "\n" for e in entries))
    if payload.placeholders:
        (info / "has_prefix").write_text("".join(f"{PLACEHOLDER} text {rel}\n"
                                                 for rel in sorted(payload.placeholders)))
    if link is not None:
        (info / "link.json").write_text(json.dumps(link, indent=2) + "\n")
    (info / "about.json").write_text(json.dumps({
        "summary": f"{index['name']} for tests, repackaged by tests/support/conda_channel.py"
    }) + "\n")
    subdir = out_dir / index["subdir"]
    subdir.mkdir(parents=True, exist_ok=True)
    target = subdir / f"{index['name']}-{index['version']}-{index['build']}.tar.bz2"
    partial = target.with_suffix(".partial")

    def normalise(tarinfo: tarfile.TarInfo) -> tarfile.TarInfo:
        tarinfo.uid = tarinfo.gid = 0
        tarinfo.uname = tarinfo.gname = ""
        return tarinfo

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in [*_walk(info), *files]:
            tar.add(path, arcname=path.relative_to(payload.root).as_posix(), recursive=False,
                    filter=normalise)
    # Level 1: the archives stay local, so speed matters more than size.
    partial.write_bytes(bz2.compress(raw.getvalue(), compresslevel=1))
    partial.rename(target)
    return target


def _index(name: str, version: str, build: str, build_number: int, subdir: str, *,
           depends: list[str], constrains: list[str] | None = None, noarch: str | None = None,
           license_: str | None = None, extra: dict | None = None) -> dict:
    index = {"name": name, "version": version, "build": build, "build_number": build_number,
             "depends": depends, "constrains": constrains or [], "subdir": subdir,
             "timestamp": 1700000000000}
    if subdir in SUBDIR_MACHINES:
        index.update(arch=SUBDIR_MACHINES[subdir], platform="linux")
    if noarch:
        index["noarch"] = noarch
    if license_:
        index["license"] = license_
    index.update(extra or {})
    return index


# --------------------------------------------------------------------------- python from debs


def _apt_get(args: list[str], cwd: Path | None = None) -> str:
    """``apt-get ARGS``; on a machine whose package lists are missing, update them once."""
    for attempt in (0, 1):
        proc = subprocess.run(["apt-get", "-q", *args], cwd=cwd, capture_output=True, text=True,
                              timeout=300)
        if proc.returncode == 0:
            return proc.stdout
        if attempt == 0 and os.geteuid() == 0:
            subprocess.run(["apt-get", "-q", "update"], capture_output=True, timeout=300)
            continue
    raise RuntimeError(f"apt-get {' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")


def debian_python_debs() -> list[tuple[str, str]]:
    """(file name, sha256) of the debs ``apt-get download`` would fetch for PYTHON_DEBS."""
    out = _apt_get(["download", "--print-uris", *PYTHON_DEBS])
    debs = []
    for line in out.splitlines():
        match = re.match(r"'[^']+' (\S+) \d+ SHA256:([0-9a-f]{64})$", line.strip())
        if match:
            debs.append((match.group(1), match.group(2)))
    if len(debs) != len(PYTHON_DEBS):
        raise RuntimeError(f"apt-get --print-uris gave {debs!r} for {PYTHON_DEBS}")
    return sorted(debs)


def _patch(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    if text.count(old) != 1:
        raise RuntimeError(f"{path.name}: expected exactly one {old!r} to patch")
    path.write_text(text.replace(old, new))


def build_python(work: Path, out_dir: Path, debs: list[tuple[str, str]],
                 ensurepip_wheels: list[Path], subdir: str = "linux-64",
                 deb_dir: Path | None = None) -> Path:
    """Repackage Debian's python3.11 as a conda ``python`` package for ``subdir``: the
    linux-64 debs apt downloads, or those of ``deb_dir`` (another architecture's)."""
    if deb_dir is None:
        deb_dir = work / "debs"
        deb_dir.mkdir()
        _apt_get(["download", *PYTHON_DEBS], cwd=deb_dir)
    extracted = work / "debroot"
    for name, sha in debs:
        if file_sha256(deb_dir / name) != sha:
            raise RuntimeError(f"{name}: sha256 differs from apt's index")
        subprocess.run(["dpkg-deb", "-x", str(deb_dir / name), str(extracted)], check=True,
                       timeout=120)
    python_deb = next(name for name, _ in debs if name.startswith("python3.11_"))
    version = re.match(r"python3\.11_(\d+\.\d+\.\d+)-", python_deb)
    if version is None:
        raise RuntimeError(f"no python3.11 deb version in {debs}")
    py_version = version.group(1)

    root = work / "python"
    (root / "bin").mkdir(parents=True)
    shutil.copy2(extracted / "usr/bin/python3.11", root / "bin/python3.11")
    (root / "bin/python3").symlink_to("python3.11")
    (root / "bin/python").symlink_to("python3.11")
    payload = _Payload(root)
    pydoc = (extracted / "usr/bin/pydoc3.11").read_text()
    (root / "bin/pydoc3.11").write_text(
        pydoc.replace("#!/usr/bin/python3.11", f"#!{PLACEHOLDER}/bin/python3.11", 1))
    (root / "bin/pydoc3.11").chmod(0o755)
    payload.placeholders.add("bin/pydoc3.11")

    stdlib = root / "lib/python3.11"
    shutil.copytree(extracted / "usr/lib/python3.11", stdlib, symlinks=True,
                    ignore=shutil.ignore_patterns("__pycache__"))
    # Debian-only: the PEP 668 marker that makes pip refuse to install into a conda
    # environment, and sitecustomize.py, a link to the apport hook in /etc, replaced below.
    (stdlib / "EXTERNALLY-MANAGED").unlink()
    (stdlib / "sitecustomize.py").unlink()
    # Debian's site.py adds <prefix>/lib/python3.11/site-packages only in virtual
    # environments. The interpreter runs the `site` frozen into the binary, not site.py, so
    # sitecustomize.py (which that `site` imports) adds it; site.py is patched as well for
    # `-X frozen_modules=off`.
    _patch(stdlib / "site.py", "            if is_virtual_environment:\n",
           "            if True:  # conda layout: <prefix>/lib/pythonX.Y/site-packages\n")
    (stdlib / "sitecustomize.py").write_text(SITECUSTOMIZE)
    # Debian's sysconfig defaults to /usr/local's scheme (pip would install into
    # <prefix>/local/lib/python3.11/dist-packages): default to posix_prefix.
    _patch(stdlib / "sysconfig.py", "            prefix_scheme = 'posix_local'\n",
           "            prefix_scheme = 'posix_prefix'  # conda layout\n")
    # ensurepip prefers the system's /usr/share/python-wheels when it has both wheels: use the
    # bundled ones only, as conda's python does.
    _patch(stdlib / "ensurepip/__init__.py",
           "_WHEEL_PKG_DIR = sysconfig.get_config_var('WHEEL_PKG_DIR')\n",
           "_WHEEL_PKG_DIR = None  # conda layout: the wheels in ensurepip/_bundled\n")
    bundled = stdlib / "ensurepip" / "_bundled"
    bundled.mkdir()
    for wheel in ensurepip_wheels:
        shutil.copy2(wheel, bundled / wheel.name)
    site_packages = stdlib / "site-packages"
    site_packages.mkdir()
    (site_packages / "README.txt").write_text(
        "This directory exists so that 3rd party packages can be installed here.\n")
    for path in _walk(root):
        if path.is_symlink() and os.readlink(path).startswith("/"):
            raise RuntimeError(f"absolute symlink left in the python package: {path}")

    build_hash = hashlib.sha256("".join(sha for _, sha in debs).encode()).hexdigest()[:7]
    index = _index("python", py_version, f"h{build_hash}_0_cpython", 0, subdir,
                   depends=[], constrains=[f"python_abi {PYTHON_VERSION}.* *_{PYTHON_ABI}"],
                   license_="Python-2.0",
                   extra={"python_site_packages_path": "lib/python3.11/site-packages"})
    return _write_package(payload, index, out_dir)


def build_python_abi(work: Path, out_dir: Path, subdir: str = "linux-64") -> Path:
    root = work / f"python_abi-{subdir}"
    root.mkdir()
    index = _index("python_abi", PYTHON_VERSION, f"8_{PYTHON_ABI}", 8, subdir, depends=[],
                   constrains=[f"python {PYTHON_VERSION}.* *_cpython"], license_="BSD-3-Clause")
    return _write_package(_Payload(root), index, out_dir)


def build_probe_data(work: Path, out_dir: Path) -> Path:
    """``probe-data``: no Python in it, a private (0600) data file and a script."""
    root = work / "probe-data"
    data = root / "share" / "probe-data" / "probe.txt"
    data.parent.mkdir(parents=True)
    data.write_text("probe data\n")
    data.chmod(0o600)
    script = root / "bin" / "probe-data"
    script.parent.mkdir()
    script.write_text('#!/bin/sh\nexec cat "$(dirname "$0")/../share/probe-data/probe.txt"\n')
    script.chmod(0o755)
    index = _index("probe-data", "1.0", "0", 0, "noarch", depends=[], noarch="generic",
                   license_="MIT")
    return _write_package(_Payload(root), index, out_dir)


# --------------------------------------------------------------------------- wheels


def download_wheels(dest: Path, pins: tuple[tuple[str, str], ...] = WHEELS,
                    machine: str = "x86_64") -> list[Path]:
    """The pinned wheels (requirement, sha256) for ``machine`` from the package index,
    hash-checked by pip."""
    dest.mkdir(parents=True, exist_ok=True)
    rounds: list[list[tuple[str, str]]] = []  # pip takes one version of a name per call
    for req, sha in pins:
        name = canonicalize_name(Requirement(req).name)
        free = [r for r in rounds if all(canonicalize_name(Requirement(q).name) != name
                                         for q, _ in r)]
        (free[0] if free else rounds.append([]) or rounds[-1]).append((req, sha))
    for number, batch in enumerate(rounds):
        requirements = dest / f"requirements-{number}.txt"
        requirements.write_text("".join(f"{req} --hash=sha256:{sha}\n" for req, sha in batch))
        proc = subprocess.run(
            [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
             "--only-binary=:all:", "--require-hashes", "--python-version", PYTHON_VERSION,
             "--implementation", "cp", "--abi", PYTHON_ABI, "--platform",
             f"manylinux2014_{machine}", "-d", str(dest), "-r", str(requirements)],
            capture_output=True, text=True, timeout=300)
        if proc.returncode != 0:
            raise RuntimeError(f"pip download failed: {proc.stderr.strip()[-2000:]}")
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != len(pins):
        raise RuntimeError(f"expected {len(pins)} wheels, got {[w.name for w in wheels]}")
    return wheels


def _conda_requirements(metadata: Any, machine: str) -> list[str]:
    env = {**default_environment(), "python_version": PYTHON_VERSION,
           "python_full_version": f"{PYTHON_VERSION}.0", "sys_platform": "linux",
           "platform_system": "Linux", "platform_machine": machine, "os_name": "posix",
           "implementation_name": "cpython", "platform_python_implementation": "CPython"}
    depends = []
    for line in metadata.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate({**env, "extra": ""}):
            continue
        depends.append(f"{canonicalize_name(req.name)} {req.specifier}".strip())
    return depends


def wheel_to_conda(wheel: Path, work: Path, out_dir: Path) -> Path:
    """A conda package from a wheel: ``noarch: python`` if pure, else linux-64 or
    linux-aarch64 (by its tags) for cp311."""
    name, version, _, tags = parse_wheel_filename(wheel.name)
    pure = all(tag.abi == "none" and tag.platform == "any" for tag in tags)
    subdir = next((subdir for subdir, cpu in SUBDIR_MACHINES.items() for tag in tags
                   if tag.interpreter == PYTHON_ABI and tag.platform.endswith(f"_{cpu}")
                   and "linux" in tag.platform), None)
    if not pure and subdir is None:
        raise ValueError(f"{wheel.name}: neither pure nor a {PYTHON_ABI} linux wheel")
    root = work / f"{name}-{version}-{subdir or 'noarch'}"
    site = root / ("site-packages" if pure else "lib/python3.11/site-packages")
    payload = _Payload(root)
    with zipfile.ZipFile(wheel) as archive:
        dist_info = next(n.split("/")[0] for n in archive.namelist()
                         if n.split("/")[0].endswith(".dist-info"))
        metadata = HeaderParser().parsestr(archive.read(f"{dist_info}/METADATA").decode())
        entry_points_text = (archive.read(f"{dist_info}/entry_points.txt").decode()
                             if f"{dist_info}/entry_points.txt" in archive.namelist() else "")
        for info in archive.infolist():
            if info.is_dir():
                continue
            parts = info.filename.split("/")
            if parts[0].endswith(".data"):
                kind, rest = parts[1], parts[2:]
                if kind in ("purelib", "platlib"):
                    target = site.joinpath(*rest)
                elif kind == "scripts" and pure:
                    target = root.joinpath("python-scripts", *rest)
                else:
                    raise ValueError(f"{wheel.name}: unsupported wheel data {info.filename}")
            else:
                target = site.joinpath(*parts)
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(archive.read(info))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                target.chmod(mode)
    (site / dist_info / "INSTALLER").write_text("conda\n")

    entry_points = []
    section = None
    for raw in entry_points_text.splitlines():
        line = raw.strip()
        if line.startswith("["):
            section = line.strip("[]")
        elif line and section == "console_scripts":
            script, target = (part.strip() for part in line.split("=", 1))
            entry_points.append(f"{script} = {target}")

    sha = file_sha256(wheel)[:7]
    depends = _conda_requirements(metadata, SUBDIR_MACHINES.get(subdir or "", "x86_64"))
    conda_name = str(canonicalize_name(name))
    license_ = metadata.get("License-Expression") or metadata.get("License")
    if pure:
        requires_python = metadata.get("Requires-Python")
        depends.insert(0, f"python {requires_python}".strip() if requires_python else "python")
        index = _index(conda_name, str(version), f"pyh{sha}_0", 0, "noarch", depends=depends,
                       noarch="python", license_=license_)
        link = {"noarch": {"type": "python", "entry_points": entry_points},
                "package_metadata_version": 1}
        return _write_package(payload, index, out_dir, link=link)
    for script, target in (ep.split(" = ") for ep in entry_points):
        module, func = target.split(":")
        path = root / "bin" / script
        path.parent.mkdir(exist_ok=True)
        path.write_text(f"#!{PLACEHOLDER}/bin/python3.11\nimport sys\nfrom {module} import "
                        f"{func.split('.')[0]}\nsys.exit({func}())\n")
        path.chmod(0o755)
        payload.placeholders.add(f"bin/{script}")
    depends[:0] = [f"python >={PYTHON_VERSION},<3.12.0a0",
                   f"python_abi {PYTHON_VERSION}.* *_{PYTHON_ABI}"]
    index = _index(conda_name, str(version), f"py311h{sha}_0", 0, str(subdir),
                   depends=depends, license_=license_)
    return _write_package(payload, index, out_dir)


# --------------------------------------------------------------------------- the channel


def cache_key(debs: list[tuple[str, str]], arm64_debs: list[tuple[str, str]]) -> str:
    digest = hashlib.sha256(Path(__file__).read_bytes())
    extra = [arm64_debs, AARCH64_WHEELS] if arm64_debs else []
    digest.update(json.dumps([debs, WHEELS, ENSUREPIP_WHEELS, *extra]).encode())
    return digest.hexdigest()[:16]


def build_channel(cache: Path | None = None, arm64_debs: Path | None = None) -> LocalChannel:
    """The channel, built once per cache key under ``cache`` (default CACHE) and reused; with
    ``arm64_debs`` (a directory of Debian's arm64 python3.11 debs), its linux-aarch64
    python, python_abi and markupsafe too."""
    cache = Path(cache) if cache is not None else CACHE
    debs = debian_python_debs()
    arm64 = sorted((deb.name, file_sha256(deb)) for deb in arm64_debs.glob("*.deb")
                   ) if arm64_debs else []
    root = cache / cache_key(debs, arm64)
    manifest = root / "manifest.json"
    if manifest.is_file():
        return LocalChannel(root, tuple(json.loads(manifest.read_text())["packages"]))
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="build-", dir=cache) as tmp:
        work = Path(tmp)
        staging = work / "root"
        channel_dir = staging / CHANNEL_NAME
        for subdir in ("noarch", "linux-64", *(["linux-aarch64"] if arm64 else [])):
            (channel_dir / subdir).mkdir(parents=True)
        ensurepip = download_wheels(work / "ensurepip", ENSUREPIP_WHEELS)
        archives = [build_python(work, channel_dir, debs, ensurepip),
                    build_python_abi(work, channel_dir), build_probe_data(work, channel_dir)]
        wheels = download_wheels(work / "wheels")
        if arm64_debs:
            (work / "arm64").mkdir()
            archives += [build_python(work / "arm64", channel_dir, arm64, ensurepip,
                                      "linux-aarch64", arm64_debs),
                         build_python_abi(work, channel_dir, "linux-aarch64")]
            wheels += download_wheels(work / "aarch64-wheels", AARCH64_WHEELS, "aarch64")
        for wheel in wheels:
            archives.append(wheel_to_conda(wheel, work / "wheel-payloads", channel_dir))
        index_channel(channel_dir)
        packages = sorted(f"{a.parent.name}/{a.name}" for a in archives)
        (staging / "manifest.json").write_text(json.dumps(
            {"packages": packages, "debs": debs, "wheels": WHEELS}, indent=2) + "\n")
        try:
            staging.rename(root)
        except OSError:  # another session built it meanwhile
            if not manifest.is_file():
                raise
    _prune(cache, keep=root)
    return LocalChannel(root, tuple(json.loads(manifest.read_text())["packages"]))


def _prune(cache: Path, keep: Path, age: float = 3600) -> None:
    """Remove channels of other keys (older code or debs) built over ``age`` seconds ago."""
    for entry in cache.iterdir():
        if (entry != keep and re.fullmatch(r"[0-9a-f]{16}|build-\w+", entry.name)
                and time.time() - entry.stat().st_mtime > age):
            shutil.rmtree(entry, ignore_errors=True)


# --------------------------------------------------------------------------- serving, config


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    timeout = 30  # per connection: a stuck client cannot hold a thread for long

    basic_auth: str | None = None  # "user:password" the client must send

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def send_head(self) -> Any:
        if self.basic_auth and self.headers.get("Authorization") != "Basic " + \
                base64.b64encode(self.basic_auth.encode()).decode():
            self.send_response(401)
            self.send_header("WWW-Authenticate", 'Basic realm="channel"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        return super().send_head()


@contextlib.contextmanager
def serve_channel(channel: LocalChannel, *, lifetime: float = 900,
                  token: str | None = None, basic_auth: str | None = None) -> Iterator[str]:
    """Serve ``channel.root`` on 127.0.0.1; yields the base URL (the HTTP channel alias).

    ``<url>/conda-forge`` is the channel. With ``token``, only under ``/t/<token>/``, as
    anaconda.org serves private channels (the yielded URL includes it). The server stops on
    exit, or by itself after ``lifetime`` seconds. With ``basic_auth`` ("user:password"),
    every request must carry it (the yielded URL does not).
    """
    root = channel.root
    if token:
        root = Path(tempfile.mkdtemp(prefix="channel-token-"))
        (root / "t").mkdir()
        (root / "t" / token).symlink_to(channel.root, target_is_directory=True)

    class Handler(_QuietHandler):
        pass

    Handler.basic_auth = basic_auth

    def handler(*args: Any, **kwargs: Any) -> _QuietHandler:
        return Handler(*args, directory=str(root), **kwargs)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.2},
                              daemon=True)
    thread.start()
    deadline = threading.Timer(lifetime, server.shutdown)
    deadline.daemon = True
    deadline.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}" + (f"/t/{token}/" if token else "")
    finally:
        if token:
            shutil.rmtree(root, ignore_errors=True)
        deadline.cancel()
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def write_channel_config(channel: LocalChannel, directory: Path, *,
                         base_url: str | None = None) -> dict[str, Path]:
    """Config files that point ``conda-forge`` at ``channel`` without touching conda.yaml.

    - ``.condarc``: ``channel_alias`` (conda, mamba, conda-lock and
      ``rattler.ChannelConfig(channel_alias=...)`` all read this key).
    - ``config.toml``: rattler/pixi configuration, ``[mirrors]`` mapping conda-forge's URL to
      ``base_url``'s (an HTTP server from ``serve_channel``; rattler's mirror middleware
      rewrites HTTP requests only) and ``default-channels``. ``rattler.Config.load_from_files``
      reads it and ``Client.from_config``/``Gateway.from_config`` apply the mirrors.
    """
    directory.mkdir(parents=True, exist_ok=True)
    alias = (base_url.rstrip("/") + "/") if base_url else channel.alias_url
    condarc = directory / ".condarc"
    condarc.write_text(f"channel_alias: {alias}\nchannels:\n  - {CHANNEL_NAME}\n"
                       "default_channels: []\nchannel_priority: strict\n")
    mirror = alias + CHANNEL_NAME
    toml = directory / "config.toml"
    toml.write_text(f'default-channels = ["{CHANNEL_NAME}"]\n\n[mirrors]\n'
                    f'"{DEFAULT_ALIAS}{CHANNEL_NAME}" = ["{mirror}"]\n')
    return {"condarc": condarc, "config.toml": toml}


if __name__ == "__main__":  # build (or find) the channel and time it
    started = time.monotonic()
    built = build_channel()
    print(json.dumps({"root": str(built.root), "alias": built.alias_url,
                      "packages": built.packages,
                      "seconds": round(time.monotonic() - started, 1)}, indent=2))
