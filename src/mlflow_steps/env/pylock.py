"""Locked environments: a PEP 751 ``pylock.toml`` (or ``pylock.<name>.toml``), or a uv
project (``pyproject.toml`` + ``uv.lock``, exported to PEP 751 by uv itself). Read and
selected for the image's platform and Python with packaging's ``pylock`` module: markers
evaluated for the target, the default dependency groups, no resolver."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

import packaging
from packaging.tags import compatible_tags, cpython_tags
from packaging.version import Version

from mlflow_steps.core.bounded import (
    file_sha256,
    quoted,
    read_env_text,
    relative_name,
    resolve_inside,
)
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.image.platforms import DEFAULT_PLATFORMS, environment_markers, machine

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

UV_LOCK = "uv.lock"
PYPROJECT = "pyproject.toml"
MIN_PACKAGING = "26.4"  # packaging.pylock's select() and its errors
# manylinux glibc versions a wheel may ask for: the image's own is checked when installing
MANYLINUX_MINORS = range(39, 4, -1)
EXPORT_TIMEOUT = 60  # s: uv reads two local files
INCOMPATIBLE_PYTHON = "which is incompatible with the project's Python requirement"


@dataclass(frozen=True)
class LockedPackage:
    """One package the lock installs on the target: from an index (``version`` and the
    hashes of every artifact the lock lists for it, whichever the installer picks), a direct
    reference (``url``: an archive, or a VCS URL at its commit), or a wheel of the codeset
    (``path``: its codeset-relative path; shipped by its file name in the env files' wheels/)."""

    name: str
    version: str | None
    hashes: tuple[str, ...]  # "sha256:<hex>", sorted
    index: str | None = None
    url: str | None = None
    path: str | None = None

    def requirement(self, env_dir: str) -> str:
        """Its requirements.txt line (hash-checked where the lock has hashes), naming
        ``env_dir`` as where the env files are."""
        head = (f"{env_dir}/wheels/{PurePosixPath(self.path).name}" if self.path else
                f"{self.name} @ {self.url}" if self.url else f"{self.name}=={self.version}")
        return " ".join([head, *(f"--hash={h}" for h in self.hashes)])

    def canonical(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "hashes": list(self.hashes),
                "index": self.index, "url": self.url, **({"path": self.path} if self.path
                                                          else {})}


def _target_tags(python: str, cpu: str) -> list[Any]:
    version = tuple(int(part) for part in python.split("."))
    platforms = [*(f"manylinux_2_{minor}_{cpu}" for minor in MANYLINUX_MINORS),
                 f"manylinux2014_{cpu}", f"manylinux2010_{cpu}",
                 f"manylinux1_{cpu}", f"linux_{cpu}"]
    return [*cpython_tags(version, platforms=platforms),
            *compatible_tags(version, f"cp{version[0]}{version[1]}", platforms)]


def read_pylock(codeset: Path, path: Path, python: str, text: str | None = None,
                source: str | None = None, groups: tuple[str, ...] = (),
                platforms: tuple[str, ...] = DEFAULT_PLATFORMS
                ) -> dict[str, tuple[LockedPackage, ...]]:
    """The packages ``path`` (a pylock.toml in ``codeset``; ``text``: its content, when
    exported from another lock named ``source``) installs for CPython ``python`` on each of
    ``platforms`` (platform → its packages), with dependency ``groups`` (none: the lock's
    default groups)."""
    source = source or relative_name(codeset, path)
    pylock_module = _pylock_module(source)
    text = read_env_text(codeset, path) if text is None else text
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise StepError(f"not valid TOML ({exc})", source=source) from None
    try:
        lock = pylock_module.Pylock.from_dict(data)
    except pylock_module.PylockUnsupportedVersionError as exc:
        raise StepError(f"{exc} (this builder reads lock-version 1.x)", source=source,
                        field="lock-version") from None
    except pylock_module.PylockValidationError as exc:
        raise StepError(str(exc), source=source) from None  # it names the entry
    if lock.requires_python and not lock.requires_python.contains(python, prereleases=True):
        raise StepError(f"requires-python {lock.requires_python} excludes python {python}, "
                        f"the image's: set another in .python-version", source=source,
                        field="requires-python")
    return {platform: _select(lock, pylock_module, python, platform, groups, codeset,
                              path.parent, source) for platform in platforms}


def _select(lock: Any, pylock_module: Any, python: str, platform: str,
            groups: tuple[str, ...], codeset: Path, lock_dir: Path, source: str
            ) -> tuple[LockedPackage, ...]:
    """What ``lock`` installs for CPython ``python`` on ``platform``, sorted by name."""
    cpu = machine(platform)
    try:
        selected = list(lock.select(environment=environment_markers(f"{python}.0", cpu),  # type: ignore[arg-type]
                                    tags=_target_tags(python, cpu),
                                    dependency_groups=groups or None))
    except pylock_module.PylockSelectError as exc:
        if str(exc).startswith("Undeclared dependency groups"):
            raise StepError(f"{exc} (the lock declares: "
                            f"{', '.join(lock.dependency_groups or ()) or 'none'})",
                            source=source, field="dependency_groups") from None
        raise StepError(f"{exc} for python {python} on {platform}; relock for it "
                        f"(e.g. `uv lock`)", source=source) from None
    return tuple(sorted((_locked(package, artifact, codeset, lock_dir, source)
                         for package, artifact in selected), key=lambda p: p.name))


def _locked(package: Any, artifact: Any, codeset: Path, lock_dir: Path,
            source: str) -> LockedPackage:
    field = f"packages.{package.name}"
    if package.directory is not None:
        raise StepError(f"a directory source ({quoted(package.directory.path, 60)}) is built "
                        f"from source, which the image build does not do; lock a wheel "
                        f"instead (uv export --no-emit-project leaves the project out)",
                        source=source, field=field)
    if package.vcs is not None:
        vcs = package.vcs
        if not vcs.url:
            raise StepError("a VCS source needs a url", source=source, field=f"{field}.vcs")
        url = f"{vcs.type}+{vcs.url}@{vcs.commit_id}"
        if vcs.subdirectory:
            url += f"#subdirectory={vcs.subdirectory}"
        return LockedPackage(package.name, None, (), url=redact(url))
    if getattr(artifact, "path", None) is not None:
        return _local_wheel(package, artifact, codeset, lock_dir, source)
    artifacts = [*(package.wheels or ()), *([package.sdist] if package.sdist else []),
                 *([package.archive] if package.archive else [])]
    hashes = tuple(sorted({f"{algorithm}:{digest}" for artifact in artifacts
                           if artifact.path is None
                           for algorithm, digest in artifact.hashes.items()
                           if algorithm == "sha256"}))
    if package.archive is not None:
        return LockedPackage(package.name, None, hashes, url=package.archive.url)
    if package.version is None:
        raise StepError("an index package needs a version", source=source, field=field)
    return LockedPackage(package.name, str(package.version), hashes, index=package.index)


def _local_wheel(package: Any, artifact: Any, codeset: Path, lock_dir: Path,
                 source: str) -> LockedPackage:
    """A wheel the lock names by path (relative to the lock): inside the codeset, with the
    sha256 the lock gives it."""
    field = f"packages.{package.name}"
    if not artifact.path.endswith(".whl"):
        raise StepError(f"a local source archive ({quoted(artifact.path, 60)}) is built from "
                        f"source, which the image build does not do; lock its wheel",
                        source=source, field=field)
    wheel = resolve_inside(codeset, lock_dir, artifact.path, source=source, field=field)
    if not wheel.is_file():
        raise StepError(f"{quoted(artifact.path, 60)} is not a file in the codeset",
                        source=source, field=field)
    expected = artifact.hashes.get("sha256")
    if expected is None:
        raise StepError("a local wheel needs its sha256 in the lock", source=source,
                        field=field)
    if file_sha256(wheel) != expected:
        raise StepError(f"{quoted(artifact.path, 60)} does not match the lock's sha256",
                        source=source, field=field)
    return LockedPackage(package.name, str(package.version) if package.version else None,
                         (f"sha256:{expected}",), path=relative_name(codeset, wheel))


def _pylock_module(source: str) -> Any:
    """packaging's pylock module, when packaging is new enough: its lower bound stays at 23
    for the oldest MLflow the runtime supports (3.0 wants packaging<26)."""
    if Version(packaging.__version__) < Version(MIN_PACKAGING):
        raise StepError(f"reading a PEP 751 lock needs packaging>={MIN_PACKAGING} beside "
                        f"mlflow-steps (this one has {packaging.__version__})", source=source)
    return importlib.import_module("packaging.pylock")  # not in packaging<26.1


def export_uv_lock(codeset: Path, environ: dict[str, str], groups: tuple[str, ...] = ()
                   ) -> tuple[str, bool]:
    """``codeset``'s uv.lock as PEP 751 text, by uv (``uv export``): the dependency ``groups``
    (none: the default groups), the project itself left out; refused when the lock does not
    satisfy pyproject.toml. uv runs offline with this interpreter, builds nothing and sees no
    credential. uv checks a lock against pyproject.toml with an interpreter in its
    requires-python: when this one is not, the lock is exported unchecked (False)."""
    selection = ["--no-default-groups", *(f"--group={group}" for group in groups)] if (
        groups) else []
    result = _uv_export(codeset, environ, ["--locked", f"--python={sys.executable}",
                                           *selection])
    checked = INCOMPATIBLE_PYTHON not in result.stderr
    if not checked:
        result = _uv_export(codeset, environ, ["--frozen", *selection])
    if result.returncode != 0:
        lines = [line.strip() for line in result.stderr.splitlines() if line.strip()]
        reason = redact(" ".join(lines[-3:]))[-400:] or f"exit {result.returncode}"
        # uv re-resolves only when the lock does not match pyproject.toml; offline, that
        # fails for want of the index: stale either way
        if "is not defined in the project's `dependency-groups`" in reason:
            raise StepError(f"{reason.removeprefix('error: ')} (pyproject.toml)",
                            source="input", field="dependency_groups")
        if "needs to be updated" in reason or "network was disabled" in reason:
            raise StepError("does not satisfy pyproject.toml any more; run `uv lock`",
                            source=UV_LOCK)
        raise StepError(f"uv could not read it: {reason}", source=UV_LOCK)
    return result.stdout, checked


def _uv_export(codeset: Path, environ: dict[str, str], options: list[str]
               ) -> subprocess.CompletedProcess[str]:
    env = {key: environ[key] for key in ("PATH", "LANG", "LC_ALL", "TZ") if key in environ}
    with tempfile.TemporaryDirectory(prefix="mls-uv-export-") as home:
        env.update(HOME=home, UV_CACHE_DIR=os.path.join(home, "cache"),
                   UV_PYTHON_DOWNLOADS="never")
        try:
            return subprocess.run(
                [str(uv_binary()), "export", "--quiet", "--format", "pylock.toml", "--offline",
                 "--no-build", "--no-emit-project", "--no-header", *options,
                 "--directory", str(codeset)],
                capture_output=True, text=True, env=env, timeout=EXPORT_TIMEOUT, check=False)
        except subprocess.TimeoutExpired:
            raise StepError(f"uv export took over {EXPORT_TIMEOUT} s", source=UV_LOCK) from None
