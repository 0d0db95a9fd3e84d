"""Progress of a test process a person can follow while `make test` runs.

With ``MLFLOW_STEPS_TEST_PROGRESS_FD`` set, the process writes to that file descriptor a
line per finished test file, a line per failure as it happens, and a heartbeat naming the
running test when nothing was written for a while; each line starts with the process's
label (``MLFLOW_STEPS_TEST_PROGRESS_LABEL``) and the time since it started. pytest's own
report goes where its output is sent (`make test` shows it at the end). The descriptor is
not one pytest captures, and a line is one ``write`` (shorter than a pipe's atomic size),
so two processes can share a terminal.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter

import pytest

FD_VARIABLE = "MLFLOW_STEPS_TEST_PROGRESS_FD"
LABEL_VARIABLE = "MLFLOW_STEPS_TEST_PROGRESS_LABEL"
HEARTBEAT_VARIABLE = "MLFLOW_STEPS_TEST_PROGRESS_HEARTBEAT"
LINE_LIMIT = 500  # bytes: below PIPE_BUF, so lines of two processes never interleave


def _clock(seconds: float) -> str:
    minutes, seconds = divmod(int(seconds), 60)
    return f"{minutes}:{seconds:02d}"


class Progress:
    """The pytest plugin: counts outcomes per file and writes the lines."""

    def __init__(self, fd: int, label: str, heartbeat: float) -> None:
        self.fd, self.label, self.heartbeat = fd, label, heartbeat
        self.started = self.last_line = time.monotonic()
        self.total = self.done = 0
        self.file = ""
        self.file_started = 0.0
        self.outcomes: Counter[str] = Counter()
        self.running = ""
        self.test_started = 0.0
        self.lock = threading.Lock()
        self.stopped = threading.Event()
        self.beat = threading.Thread(target=self._heartbeat, daemon=True)

    def _write(self, text: str) -> None:
        now = time.monotonic()
        line = f"[{self.label} {_clock(now - self.started)}] {text}"
        os.write(self.fd, (line[:LINE_LIMIT - 1] + "\n").encode(errors="replace"))
        self.last_line = now

    def _finish_file(self) -> None:
        if not self.file:
            return
        counts = ", ".join(f"{n} {outcome}" for outcome, n in sorted(self.outcomes.items()))
        took = time.monotonic() - self.file_started
        self._write(f"{self.done}/{self.total} {self.file}: {counts} ({took:.0f} s)")
        self.outcomes.clear()

    def _heartbeat(self) -> None:
        while not self.stopped.wait(min(self.heartbeat, 5.0)):
            with self.lock:
                now = time.monotonic()
                if self.running and now - self.last_line >= self.heartbeat:
                    self._write(f"{self.done}/{self.total} running {self.running} "
                                f"({_clock(now - self.test_started)})")

    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.total = len(session.items)
        self._write(f"{self.total} tests collected")
        self.beat.start()

    def pytest_runtest_logstart(self, nodeid: str, location: object) -> None:
        with self.lock:
            file = nodeid.split("::", 1)[0]
            if file != self.file:
                self._finish_file()
                self.file, self.file_started = file, time.monotonic()
            self.running, self.test_started = nodeid, time.monotonic()

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        with self.lock:
            if report.failed:
                self.outcomes["error" if report.when != "call" else "failed"] += 1
                self._write(f"{'ERROR' if report.when != 'call' else 'FAILED'} "
                            f"{report.nodeid} ({report.when})")
            elif report.skipped:
                self.outcomes["skipped"] += 1
            elif report.when == "call":
                self.outcomes["passed"] += 1

    def pytest_runtest_logfinish(self, nodeid: str, location: object) -> None:
        with self.lock:
            self.done += 1
            self.running = ""

    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        self.stopped.set()
        with self.lock:
            self._finish_file()
            self._write(f"finished: exit status {int(exitstatus)}")


def register(config: pytest.Config) -> None:
    """Add the plugin when `make test` asked for progress (the variable names the fd)."""
    fd = os.environ.get(FD_VARIABLE)
    if not fd:
        return
    label = os.environ.get(LABEL_VARIABLE, "tests")
    heartbeat = float(os.environ.get(HEARTBEAT_VARIABLE, "60"))
    config.pluginmanager.register(Progress(int(fd), label, heartbeat), "mlflow-steps-progress")
