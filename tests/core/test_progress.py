"""Progress of long work: plain lines in a log, a live display on a terminal, nothing when
quiet."""

from __future__ import annotations

import io
import re
import threading

from mlflow_steps.core.progress import INTERVAL_ENV, Progress, human_bytes, human_seconds


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class Log(io.StringIO):
    """A log that tells when a line holding ``marker`` was written."""

    def __init__(self, marker: str) -> None:
        super().__init__()
        self.marker, self.seen = marker, threading.Event()

    def write(self, text: str) -> int:
        if self.marker in text:
            self.seen.set()
        return super().write(text)


def work(progress: Progress, ticked: threading.Event | None = None) -> None:
    """Two overlapping phases, as the direct builder runs them: a known total, and one
    whose total grows as the work goes (``ticked``: waited for after the first part)."""
    with progress.phase("compressing", 3_000_000) as compressing, \
            progress.phase("pushing", 0) as pushing:
        for _ in range(3):
            compressing.advance(1_000_000)
            pushing.grow(500_000)
            pushing.advance(500_000)
            if ticked:
                assert ticked.wait(30), "no progress line while the work ran"
                ticked = None


def test_a_log_gets_lines_while_it_runs_and_one_per_phase_at_its_end() -> None:
    stream = Log("1.0 MB of 3.0 MB (33%)")
    work(Progress(stream, environ={INTERVAL_ENV: "0.1"}), stream.seen)
    lines = stream.getvalue().splitlines()
    assert all(line.startswith("[progress] ") for line in lines)
    running = [x for x in lines if x.startswith("[progress] compressing: ") and " of " in x]
    assert any("1.0 MB of 3.0 MB (33%) in " in x and "MB/s" in x for x in running)
    finished = [x for x in lines if " of " not in x]
    assert [x.split(":")[0] for x in finished] == ["[progress] pushing",
                                                   "[progress] compressing"]
    assert finished[0].startswith("[progress] pushing: 1.5 MB in ")
    assert finished[1].startswith("[progress] compressing: 3.0 MB in ")
    assert "\x1b" not in stream.getvalue()


def test_time_only_work_says_how_long() -> None:
    stream = Log("running for")
    with Progress(stream, environ={INTERVAL_ENV: "0.05"}).phase("staging"):
        assert stream.seen.wait(30)
    lines = stream.getvalue().splitlines()
    assert re.fullmatch(r"\[progress\] staging: running for \d+s", lines[0])
    assert re.fullmatch(r"\[progress\] staging: done in \d+s", lines[-1])


def test_a_terminal_gets_a_live_display() -> None:
    stream = Terminal()
    progress = Progress(stream, environ={})
    assert progress.mode == "live"
    work(progress)
    shown = stream.getvalue()
    assert "\x1b[" in shown and "compressing" in shown and "pushing" in shown
    assert "3.0/3.0 MB" in shown and "[progress]" not in shown


def test_quiet_shows_nothing() -> None:
    for stream in (io.StringIO(), Terminal()):
        work(Progress(stream, quiet=True))
        assert stream.getvalue() == ""


def test_units() -> None:
    assert human_bytes(999) == "999 B" and human_bytes(1_234_567) == "1.2 MB"
    assert human_bytes(5.2e9) == "5.2 GB" and human_bytes(7e12) == "7000.0 GB"
    assert human_seconds(59.4) == "59s" and human_seconds(125) == "2m05s"
