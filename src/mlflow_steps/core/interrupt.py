"""SIGTERM and SIGINT during a build or a run: an exception that unwinds through every
cleanup, with child process groups ended, scratch paths removed and the exit bounded.

Within ``interruptible()`` the first signal asks every child's process group to stop, arms a
watchdog that ends the process ``EXIT_DEADLINE_SECONDS`` later whatever still runs, starts
removing the ``scratch`` paths (once the children have ended: meanwhile worker threads get
their grace) and raises ``Interrupted`` in the main thread; a second signal ends the process
at once. Children started with ``child``/``run`` lead a process group of their own (SIGKILL
follows SIGTERM after ``CHILD_GRACE_SECONDS``); ``scratch`` paths are removed on the way out
too, and by ``exit_now`` when neither got to them. Worker threads stop at their next
``check()``; a ``ThreadPool`` left by an interruption waits for running work only briefly (a
stalled upload is not waited for, and ``exit_now`` does not join it), and not at all for work
it cancelled.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor, wait
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any, NoReturn, TypeVar

SIGNALS = (signal.SIGTERM, signal.SIGINT)
CHILD_GRACE_SECONDS = 1.5  # from SIGTERM to SIGKILL of a child's process group
WORKERS_GRACE_SECONDS = 2.0  # from the signal: how long running worker threads are waited for
EXIT_DEADLINE_SECONDS = 4.0  # from the signal to the end of the process, whatever runs

_T = TypeVar("_T")
_stopping = threading.Event()
_signalled: list[tuple[int, float]] = []  # (signal, monotonic time) of the first signal
_children: set[subprocess.Popen] = set()
_scratch: set[Path] = set()
_deferring = [0]  # > 0: the main thread is in ``deferred`` (the handler does not raise)
_pools: weakref.WeakSet[ThreadPool] = weakref.WeakSet()


class Interrupted(BaseException):
    """The step received ``signum`` (a BaseException: no ``except Exception`` stops it)."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def on_signals(handler: Callable[[int, FrameType | None], Any]
               ) -> contextlib.AbstractContextManager[None]:
    """SIGTERM and SIGINT go to ``handler`` within the block (the previous handlers after)."""
    return _handled(handler)


@contextlib.contextmanager
def _handled(handler: Callable[[int, FrameType | None], Any]) -> Iterator[None]:
    previous = {signum: signal.signal(signum, handler) for signum in SIGNALS}
    try:
        yield
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)


def interruptible() -> contextlib.AbstractContextManager[None]:
    """Within the block, SIGTERM and SIGINT raise ``Interrupted`` (see the module)."""
    return on_signals(_interrupt)


def _interrupt(signum: int, _frame: FrameType | None) -> None:
    if _stopping.is_set():
        exit_now(signum)
    _signalled.append((signum, time.monotonic()))
    for pool in list(_pools):  # before the workers can see it: none starts queued work
        pool.cancel_pending()
    _stopping.set()
    for process in list(_children):
        _signal_group(process, signal.SIGTERM)
    watchdog = threading.Timer(EXIT_DEADLINE_SECONDS, exit_now, (signum,))
    watchdog.daemon = True
    watchdog.start()
    threading.Thread(target=_sweep, name="scratch-sweep", daemon=True).start()
    if not _deferring[0]:
        raise Interrupted(signum)


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """In the main thread, a signal within the block does not raise there: the caller's
    next ``check()`` does (for a child started, a path made or a run created, not yet
    registered)."""
    in_main = threading.current_thread() is threading.main_thread()
    _deferring[0] += in_main
    try:
        yield
    finally:
        _deferring[0] -= in_main


def _since_signal(seconds: float) -> float:
    """Seconds left until ``seconds`` after the signal (after now, when none came)."""
    start = _signalled[0][1] if _signalled else time.monotonic()
    return max(0.0, start + seconds - time.monotonic())


def check() -> None:
    """Raise ``Interrupted`` once the build is being interrupted (for worker threads,
    which signals do not reach)."""
    if _stopping.is_set():
        raise Interrupted(_signalled[0][0] if _signalled else signal.SIGTERM)


def exit_now(signum: int) -> NoReturn:
    """End the process with 128 + ``signum``: child groups killed, what is still registered
    removed, no thread waited for."""
    for process in list(_children):
        _signal_group(process, signal.SIGKILL)
    for path in list(_scratch):
        _remove(path)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(Exception):
            stream.flush()
    with contextlib.suppress(OSError):  # os.write: safe in a signal handler, unlike print
        os.write(2, f"mlflow-steps: interrupted by {signal.Signals(signum).name}\n".encode())
    os._exit(128 + signum)


def _sweep() -> None:
    """Remove the scratch paths as soon as no child may still use them (all ended, or the
    grace ``_end`` gives them is over), not after the grace of the worker threads: a large
    staging tree takes seconds to remove on a busy machine."""
    while _children and _since_signal(CHILD_GRACE_SECONDS + 1) > 0:
        time.sleep(0.01)
    for path in list(_scratch):
        _remove(path)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
        if path.exists():  # a read-only directory inside: made writable, then again
            for directory, _, _ in os.walk(path):
                with contextlib.suppress(OSError):
                    os.chmod(directory, 0o700)
            shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
    if not path.exists() and not path.is_symlink():
        _scratch.discard(path)


@contextlib.contextmanager
def scratch(path: Path, *, keep: bool = False) -> Iterator[Path]:
    """``path`` (a file or directory the block makes) removed when the block is left — with
    ``keep``, only when it is left by an exception — and by ``exit_now`` should an
    interruption's unwinding not get to it."""
    _scratch.add(path)
    try:
        check()
        yield path
    except BaseException:
        _remove(path)
        raise
    if keep:
        _scratch.discard(path)
    else:
        _remove(path)


@contextlib.contextmanager
def private_directory(prefix: str, parent: Path | None = None) -> Iterator[Path]:
    """A new directory only we can read (``tempfile.mkdtemp``), a ``scratch`` path."""
    with deferred():
        path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
        _scratch.add(path)
    with scratch(path):
        yield path


def _signal_group(process: subprocess.Popen, signum: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signum)


def _end(process: subprocess.Popen) -> None:
    """Stop ``process``'s group: SIGTERM, SIGKILL after the grace (what it left too)."""
    _signal_group(process, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(_since_signal(CHILD_GRACE_SECONDS) if _signalled else CHILD_GRACE_SECONDS)
    _signal_group(process, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        process.wait(1)


@contextlib.contextmanager
def child(argv: list[str], **popen: Any) -> Iterator[subprocess.Popen]:
    """``subprocess.Popen(argv, **popen)`` leading a process group of its own; the group is
    ended when the block is left by an exception (at once when the build is interrupted)."""
    check()
    with deferred():
        process = subprocess.Popen(argv, start_new_session=True, **popen)
        _children.add(process)
    try:
        check()  # interrupted while it started (the handler did not see it)
        yield process
        process.wait()
    except BaseException:
        _end(process)
        raise
    finally:
        _children.discard(process)
        for stream in (process.stdin, process.stdout, process.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


def run(argv: list[str], *, input: str | bytes | None = None,
        timeout: float | None = None, **popen: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(argv, capture_output=True, ...)`` through ``child``: a timeout
    (``subprocess.TimeoutExpired``) or an interruption ends the child's whole group."""
    stdin = subprocess.PIPE if input is not None else subprocess.DEVNULL
    with child(argv, stdin=stdin, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
               **popen) as process:
        out, err = process.communicate(input, timeout=timeout)
    return subprocess.CompletedProcess(argv, process.returncode, out, err)


class ThreadPool(ThreadPoolExecutor):
    """A ThreadPoolExecutor whose work not started is cancelled at the signal, and whose
    ``with`` block, left by an interruption, waits for running work at most
    ``WORKERS_GRACE_SECONDS`` after the signal."""

    def __init__(self, max_workers: int | None = None) -> None:
        super().__init__(max_workers)
        self._futures: list[Future[Any]] = []
        _pools.add(self)

    def submit(self, fn: Callable[..., _T], /, *args: Any, **kwargs: Any) -> Future[_T]:
        future = super().submit(fn, *args, **kwargs)
        self._futures.append(future)
        return future

    def cancel_pending(self) -> None:
        """Cancel the work not started (at the signal, so that a worker whose task stops at
        ``check()`` does not take the next one before the ``with`` block is left)."""
        for future in list(self._futures):
            future.cancel()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> bool | None:
        if exc_type is None or not issubclass(exc_type, Interrupted):
            return super().__exit__(exc_type, exc, traceback)
        self.shutdown(wait=False, cancel_futures=True)
        # A cancelled future never counts as done for ``wait``: only running work is waited for.
        wait([f for f in self._futures if not f.cancelled()],
             timeout=_since_signal(WORKERS_GRACE_SECONDS))
        return False
