"""Progress of long work (staging, compressing and pushing gigabytes): on a terminal a live
display (rich: bytes, rate, time left per phase), in logs a plain line every
``MLFLOW_STEPS_PROGRESS_INTERVAL`` seconds (default 10) and one when a phase ends; nothing
when quiet."""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, TextIO

if TYPE_CHECKING:
    from rich.progress import Progress as Display

INTERVAL_ENV = "MLFLOW_STEPS_PROGRESS_INTERVAL"
DEFAULT_INTERVAL = 10.0
LINE_PREFIX = "[progress] "  # of each line in a log


def human_bytes(count: float) -> str:
    """1234567 → '1.2 MB' (decimal units, as rich shows them)."""
    for unit in ("B", "kB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1000
    raise AssertionError("unreachable")


def human_seconds(seconds: float) -> str:
    minutes, second = divmod(int(seconds + 0.5), 60)
    return f"{minutes}m{second:02d}s" if minutes else f"{second}s"


class Phase:
    """Bytes done of a total that may still grow; ``advance`` and ``grow`` from any thread."""

    def __init__(self, name: str, total: int | None) -> None:
        self.name, self.total, self.done = name, total, 0
        self.started = time.monotonic()
        self._lock = threading.Lock()
        self.on_change: Callable[[Phase], None] = lambda _: None

    def advance(self, count: int) -> None:
        with self._lock:
            self.done += count
        self.on_change(self)

    def grow(self, count: int) -> None:
        """``count`` more bytes to do (a total known as the work goes)."""
        with self._lock:
            self.total = (self.total or 0) + count
        self.on_change(self)

    def line(self, finished: bool = False) -> str:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        if self.total is None and not self.done:  # work measured in time only
            return f"{self.name}: {'done in' if finished else 'running for'} " \
                   f"{human_seconds(elapsed)}"
        rate = self.done / elapsed
        text = f"{self.name}: {human_bytes(self.done)}"
        if self.total and not finished:
            text += f" of {human_bytes(self.total)} ({100 * self.done // self.total}%)"
        text += f" in {human_seconds(elapsed)}, {human_bytes(rate)}/s"
        if self.total and not finished and rate > 0 and self.done < self.total:
            text += f", about {human_seconds((self.total - self.done) / rate)} left"
        return text


class Progress:
    """Phases of one command's long work, shown as the stream allows."""

    def __init__(self, stream: TextIO | None = None, quiet: bool = False,
                 environ: dict[str, str] | None = None) -> None:
        self.stream = stream or sys.stderr
        environ = os.environ if environ is None else environ
        try:
            self.interval = float(environ.get(INTERVAL_ENV) or DEFAULT_INTERVAL)
        except ValueError:
            self.interval = DEFAULT_INTERVAL
        self.mode = "off" if quiet else ("live" if _is_terminal(self.stream) else "lines")
        self._display = None
        self._active = 0
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def phase(self, name: str, total: int | None = None) -> Iterator[Phase]:
        """A phase: its ``advance``/``grow`` shown while the block runs."""
        phase = Phase(name, total)
        if self.mode == "live":
            with self._live_task(phase):
                yield phase
        elif self.mode == "lines":
            stop = threading.Event()
            ticker = threading.Thread(target=self._tick, args=(phase, stop), daemon=True)
            ticker.start()
            try:
                yield phase
            finally:
                stop.set()
                ticker.join()
            self._print(phase.line(finished=True))
        else:
            yield phase

    def _tick(self, phase: Phase, stop: threading.Event) -> None:
        while not stop.wait(self.interval):
            self._print(phase.line())

    def _print(self, text: str) -> None:
        with self._lock:
            print(LINE_PREFIX + text, file=self.stream, flush=True)

    @contextlib.contextmanager
    def _live_task(self, phase: Phase) -> Iterator[None]:
        """``phase`` as a row of the one live display (started with the first phase that
        runs, stopped after the last: phases may overlap, rich shows one display at once)."""
        with self._lock:
            if self._display is None:
                self._display = _display(self.stream)
                self._display.start()
            self._active += 1
            display = self._display
        task = display.add_task(phase.name, total=phase.total)
        phase.on_change = lambda p: display.update(task, completed=p.done, total=p.total)
        try:
            yield
        finally:
            display.update(task, completed=phase.done, total=phase.total or phase.done)
            with self._lock:
                self._active -= 1
                if not self._active:
                    display.stop()
                    self._display = None


def _display(stream: TextIO) -> Display:
    """rich's display on ``stream``."""
    # rich is imported on a terminal only: logs and quiet runs never load it
    import rich.console
    import rich.progress as shown  # (the same)

    return shown.Progress(shown.SpinnerColumn(), shown.TextColumn("{task.description}"),
                          shown.BarColumn(), shown.DownloadColumn(),
                          shown.TransferSpeedColumn(), shown.TimeRemainingColumn(),
                          console=rich.console.Console(file=stream, force_terminal=True))


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False
