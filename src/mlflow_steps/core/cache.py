"""Where mlflow-steps keeps what it reuses between builds (conda archives, rewritten layers),
and how builds share it: an entry appears whole (written under a unique name beside it, then
``os.replace``), and two builds about to write one entry take turns (``entry_lock``)."""

from __future__ import annotations

import contextlib
import fcntl
import os
import stat
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path

from mlflow_steps.core.errors import StepError


def cache_root(environ: Mapping[str, str]) -> Path:
    """$MLFLOW_STEPS_CACHE, else $XDG_CACHE_HOME/mlflow-steps, else ~/.cache/mlflow-steps."""
    return Path(environ.get("MLFLOW_STEPS_CACHE") or os.path.join(
        environ.get("XDG_CACHE_HOME") or os.path.join(environ.get("HOME", "/tmp"), ".cache"),
        "mlflow-steps"))


def users_temp_directory(name: str) -> Path:
    """``<temp directory>/<name>-<uid>``, made only this user's; one that exists and is not
    (another user could swap what a build reads from it) is refused."""
    path = Path(tempfile.gettempdir()) / f"{name}-{os.getuid()}"
    with contextlib.suppress(FileExistsError):
        path.mkdir(mode=0o700)
    info = path.lstat()
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o077:
        raise StepError(f"{path} is not a directory only this user can open: set "
                        "MLFLOW_STEPS_CACHE to a cache directory", source="cache")
    return path


def temporary_beside(path: Path, suffix: str = ".partial") -> Path:
    """A new empty file named uniquely in ``path``'s directory, for the caller to fill and then
    move onto ``path`` with ``os.replace`` (atomic: the same filesystem), or to remove."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    return Path(name)


@contextlib.contextmanager
def entry_lock(path: Path) -> Iterator[None]:
    """Hold the cache entry ``path``'s lock (``fcntl.flock`` on ``<path>.lock`` beside it,
    which stays): of two builds about to make the entry, one makes it while the other waits,
    then finds it made. The caller checks again for the entry once it holds the lock."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_name(f"{path.name}.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock
