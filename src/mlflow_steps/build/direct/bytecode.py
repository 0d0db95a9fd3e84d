"""The staged environment's bytecode, compiled layer by layer as the image's interpreter would
write it (unchecked-hash pycs recording /opt/env paths), by this machine's interpreter of the
same version without ``site``: nothing of the environment runs. A ``.pyc`` depends on its
source, its path in the image and the Python version, not on the CPU: the platforms of one
build share what one of them compiled (``SharedBytecode``)."""

from __future__ import annotations

import hashlib
import os
import sys
import threading
from pathlib import Path

from mlflow_steps.build.direct.install import StagedEnv
from mlflow_steps.core import interrupt


class SharedBytecode:
    """The pycs compiled in one build, by (Python build, image path, source sha256)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._compiled: dict[tuple[str, str, str], Path] = {}

    def get(self, key: tuple[str, str, str]) -> Path | None:
        with self._lock:
            return self._compiled.get(key)

    def add(self, key: tuple[str, str, str], pyc: Path) -> None:
        with self._lock:
            self._compiled.setdefault(key, pyc)


def pyc_path(staged: StagedEnv, source: Path) -> Path:
    """Where the image's interpreter looks for ``source``'s bytecode."""
    tag = staged.python_build.split()[-1]  # sys.implementation.cache_tag
    return source.parent / "__pycache__" / f"{source.stem}.{tag}.pyc"


def compile_bytecode(staged: StagedEnv, sources: list[Path], work: Path,
                     shared: SharedBytecode | None = None) -> None:
    """Bytecode of ``sources``: taken from ``shared`` (a build of several platforms) where
    another platform compiled the same source for the same path, else compiled (and added to
    ``shared``)."""
    if shared is None:
        _compileall(staged, sources, work)
        return
    todo: dict[Path, tuple[str, str, str] | None] = {}
    for source in sources:
        if source.is_symlink():  # its pyc is not in the layer (``with_bytecode``)
            todo[source] = None
            continue
        key = (staged.python_build, source.relative_to(staged.root).as_posix(),
               hashlib.sha256(source.read_bytes()).hexdigest())
        known = shared.get(key)
        if known is None:
            todo[source] = key
            continue
        target = pyc_path(staged, source)
        target.parent.mkdir(exist_ok=True)
        linked = target.with_name(target.name + ".shared")  # over a pyc a package shipped
        os.link(known, linked)  # both in this build's work directory
        os.replace(linked, target)
    if todo:
        _compileall(staged, list(todo), work)
    for source, key in todo.items():
        if key and (pyc := pyc_path(staged, source)).is_file():
            shared.add(key, pyc)


def _compileall(staged: StagedEnv, sources: list[Path], work: Path) -> None:
    listing = work / f"compile-{os.getpid()}-{id(sources)}.txt"
    listing.write_text("".join(f"{path}\n" for path in sources))
    result = interrupt.run(  # this machine's interpreter, without site: nothing is run
        [staged.python, "-S", "-m", "compileall", "-q", "--invalidation-mode",
         "unchecked-hash", "-s", str(staged.prefix), "-p", staged.plan.env_prefix, "-i",
         str(listing)],
        text=True, env=staged.stager.scrubbed, cwd=staged.work)
    listing.unlink()
    if result.returncode != 0:  # a file that is not Python 3 (a package's template, ...)
        lines = [x for x in result.stdout.splitlines() if x.strip()]
        print(f"[direct] bytecode: {len(lines)} line(s) from compileall, e.g. "
              f"{lines[0][:200] if lines else result.stderr[-200:]}", file=sys.stderr)
