"""`make test` shows progress from both test processes while they run (issue 30, point 12)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _run_with_progress(tmp_path: Path) -> tuple[list[str], str]:
    (tmp_path / "conftest.py").write_text(
        "from support import progress\n\n\n"
        "def pytest_configure(config):\n    progress.register(config)\n")
    (tmp_path / "test_first.py").write_text(
        "import time\n\n\ndef test_quick():\n    pass\n\n\n"
        "def test_slow():\n    time.sleep(1.5)\n\n\ndef test_broken():\n    assert False\n")
    (tmp_path / "test_second.py").write_text("def test_other():\n    pass\n")
    read, write = os.pipe()
    env = {**os.environ, "PYTHONPATH": str(TESTS), "MLFLOW_STEPS_TEST_PROGRESS_FD": str(write),
           "MLFLOW_STEPS_TEST_PROGRESS_LABEL": "demo",
           "MLFLOW_STEPS_TEST_PROGRESS_HEARTBEAT": "0.5"}
    process = subprocess.Popen(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly",
         "--rootdir", str(tmp_path), "-c", os.devnull, str(tmp_path)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, pass_fds=(write,),
        cwd=tmp_path)
    os.close(write)
    with os.fdopen(read) as lines:
        progress = lines.read().splitlines()
    report = process.communicate(timeout=60)[0].decode()
    return progress, report


def test_progress_has_a_line_per_file_failures_and_heartbeats_apart_from_the_report(
        tmp_path: Path) -> None:
    progress, report = _run_with_progress(tmp_path)
    assert all(re.match(r"\[demo \d+:\d\d\] ", line) for line in progress), progress
    text = "\n".join(progress)
    assert "4 tests collected" in text
    assert re.search(r"3/4 test_first\.py: 1 failed, 2 passed \(\d+ s\)", text), text
    assert re.search(r"4/4 test_second\.py: 1 passed", text), text
    assert "FAILED test_first.py::test_broken (call)" in text
    assert "running test_first.py::test_slow" in text  # the heartbeat names the test
    assert progress[-1].endswith("finished: exit status 1")
    # pytest's own report is where its output goes, without the progress lines
    assert "1 failed, 3 passed" in report and "tests collected" not in report


def test_without_the_variable_nothing_is_written(tmp_path: Path) -> None:
    env = {key: value for key, value in os.environ.items()
           if not key.startswith("MLFLOW_STEPS_TEST_PROGRESS")}
    (tmp_path / "conftest.py").write_text(
        "from support import progress\n\n\n"
        "def pytest_configure(config):\n    progress.register(config)\n"
        "    assert not config.pluginmanager.has_plugin('mlflow-steps-progress')\n")
    (tmp_path / "test_one.py").write_text("def test_one():\n    pass\n")
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--rootdir",
         str(tmp_path), "-c", os.devnull, str(tmp_path)],
        capture_output=True, text=True, env={**env, "PYTHONPATH": str(TESTS)}, cwd=tmp_path,
        timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
