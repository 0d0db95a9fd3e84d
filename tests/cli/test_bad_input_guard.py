"""Guard: every corpus entry, through the real command line, ends the same way.

Every bad codeset (bad_input_corpus) through `hash` and `render -o`, every bad workflow text
and file (workflow_corpus) through `workflow validate`, every bad extension file through
`env --extensions`: exit 2, nothing on stdout, exactly one stderr line
`mlflow-steps: error: ...` carrying the case's words, no traceback, no corpus secret, and
nothing written (no render output, no staging directory, no new file anywhere in the case).

All of them run through the console entry point in a process of their own (cli_batch.py
forks one warm child per command: the whole corpus takes seconds, not minutes); a
representative subset also runs as a fresh `python -m mlflow_steps` (run_cli, process=True), and
must give byte-identical results, which keeps the batch runner honest.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from support.bad_input_corpus import (
    BAD_CODESETS,
    CREDENTIALS,
    LINKS,
    NESTING,
    NUMBERS,
    SECRET,
    SHAPES,
    YAML_ERRORS,
    materialise,
)
from support.helpers import run_cli
from support.workflow_corpus import BAD_WORKFLOWS, bad_extension_files, bad_workflow_files

SUPPORT = Path(__file__).resolve().parents[1] / "support"
TIMEOUT = 20  # per command; a FIFO read by mistake would block forever
WORKFLOW_FILES = bad_workflow_files()
EXTENSION_FILES = bad_extension_files()
# Hermetic: no pip config of this machine folded in (hash and render read it by default).
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("PIP_", "FUSEML_"))},
       "PIP_CONFIG_FILE": os.devnull}


class Job:
    """One command line of one case, with what it must print and must not write."""

    def __init__(self, case: str, argv: list[str], words: tuple[str, ...], root: Path,
                 output: Path | None = None) -> None:
        self.case, self.argv, self.words, self.root, self.output = case, argv, words, root, output
        self.before = _tree(root)


def _tree(root: Path) -> set[str]:
    """Every entry under ``root`` (symlinks and FIFOs listed, never followed or opened)."""
    return {os.path.relpath(os.path.join(d, name), root)
            for d, dirs, files in os.walk(root) for name in dirs + files}


def _jobs(base: Path) -> list[Job]:
    jobs = []
    for index, (case, (files, words)) in enumerate(sorted(BAD_CODESETS.items())):
        root = base / f"codeset-{index}-hash"
        codeset = materialise(root / "cs", files)
        jobs.append(Job(f"hash: {case}", ["hash", str(codeset)], words, root))
        root = base / f"codeset-{index}-render"
        codeset, out = materialise(root / "cs", files), root / "context"
        jobs.append(Job(f"render: {case}", ["render", str(codeset), "-o", str(out)], words,
                        root, out))
    for index, (case, (text, line, field, words)) in enumerate(sorted(BAD_WORKFLOWS.items())):
        root = base / f"workflow-{index}"
        root.mkdir()
        path = root / "wf.yaml"
        path.write_text(text)
        where = f"{path}:{line}: {field}: " if field else f"{path}:{line}: "
        jobs.append(Job(f"validate: {case}", ["workflow", "validate", str(path)],
                        (where, *words), root))
    for index, (case, (entry, words)) in enumerate(sorted(WORKFLOW_FILES.items())):
        root = materialise(base / f"workflow-file-{index}", {"wf.yaml": entry})
        jobs.append(Job(f"validate: {case}", ["workflow", "validate", str(root / "wf.yaml")],
                        words, root))
    for index, (case, (entry, words)) in enumerate(sorted(EXTENSION_FILES.items())):
        root = base / f"extension-{index}"
        target = (materialise(root / "extensions", entry) if isinstance(entry, dict)
                  else materialise(root, {"ext.yaml": entry}) / "ext.yaml")
        jobs.append(Job(f"env: {case}", ["env", "--extensions", str(target)], words, root))
    return jobs


def _batch(argvs: list[list[str]]) -> list[dict]:
    request = json.dumps({"timeout": TIMEOUT, "jobs": argvs})
    done = subprocess.run([sys.executable, str(SUPPORT / "cli_batch.py")], input=request,
                          capture_output=True, text=True, env=ENV, timeout=600, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


@pytest.fixture(scope="module")
def ran(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Job, dict]]:
    jobs = _jobs(tmp_path_factory.mktemp("guard"))
    results = _batch([job.argv for job in jobs])
    return {job.case: (job, result) for job, result in zip(jobs, results, strict=True)}


def _problems(job: Job, result: dict) -> list[str]:
    problems = []
    if result["timed_out"]:
        return [f"still running after {TIMEOUT} s (killed)"]
    stderr = result["stderr"]
    lines = stderr.splitlines()
    if result["code"] != 2:
        problems.append(f"exit {result['code']}, expected 2")
    if result["stdout"]:
        problems.append(f"stdout not empty: {result['stdout'][:200]!r}")
    if len(lines) != 1 or not lines[0].startswith("mlflow-steps: error: "):
        problems.append(f"expected one 'mlflow-steps: error:' line, got {stderr[:500]!r}")
    if "Traceback" in stderr:
        problems.append("traceback printed")
    if SECRET in stderr:
        problems.append("the corpus secret was printed")
    problems += [f"{word!r} not in the message" for word in job.words if word not in stderr]
    if job.output is not None and (os.path.lexists(job.output)
                                   or list(job.output.parent.glob(".render-*"))):
        problems.append("render wrote output or left its staging directory")
    if _tree(job.root) != job.before:
        problems.append(f"files written: {sorted(_tree(job.root) - job.before)[:5]}")
    return problems


CASES = ([f"{command}: {case}" for case in sorted(BAD_CODESETS) for command in ("hash", "render")]
         + [f"validate: {case}" for case in sorted(BAD_WORKFLOWS) + sorted(WORKFLOW_FILES)]
         + [f"env: {case}" for case in sorted(EXTENSION_FILES)])


@pytest.mark.parametrize("case", CASES)
def test_bad_input_through_the_cli_is_one_line_exit_2_nothing_written(
        ran: dict[str, tuple[Job, dict]], case: str) -> None:
    job, result = ran[case]
    problems = _problems(job, result)
    assert not problems, f"{case}: {'; '.join(problems)}\nstderr: {result['stderr'][:1000]}"


# One case of each class, also as a fresh interpreter (the console script as users run it).
REPRESENTATIVE = [
    "hash: missing MLproject", "render: binary garbage requirements",
    *(f"{command}: {next(iter(group))}" for group in (SHAPES, LINKS, NESTING, NUMBERS,
                                                      YAML_ERRORS, CREDENTIALS)
      for command in ("hash", "render")),
    "hash: requirements.txt is a FIFO", "render: python_env python: 3.10 unquoted",
    "validate: malformed YAML", "validate: steps nested 100k deep ([[[...]]])",
    "validate: workflow is a FIFO", "validate: workflow of 200 MB (sparse)",
    "env: extension file is a FIFO",
]


def test_representative_cases_give_the_same_result_as_a_fresh_interpreter(
        ran: dict[str, tuple[Job, dict]]) -> None:
    assert set(REPRESENTATIVE) <= set(ran)
    for case in REPRESENTATIVE:
        job, batched = ran[case]
        fresh = run_cli(*job.argv, env=ENV, timeout=TIMEOUT, process=True)
        assert (fresh.returncode, fresh.stdout, fresh.stderr) == (
            batched["code"], batched["stdout"], batched["stderr"]), case
        assert not _problems(job, {"code": fresh.returncode, "stdout": fresh.stdout,
                                   "stderr": fresh.stderr, "timed_out": False}), case


def test_the_guard_covers_every_corpus_and_class() -> None:
    assert len(CASES) == 2 * len(BAD_CODESETS) + len(BAD_WORKFLOWS) + len(WORKFLOW_FILES) \
        + len(EXTENSION_FILES)
    for group in (SHAPES, LINKS, NESTING, NUMBERS, YAML_ERRORS, CREDENTIALS):
        assert len(group) >= 8 and set(group) <= set(BAD_CODESETS)


def test_the_batch_runner_reports_tracebacks_and_hangs(tmp_path: Path) -> None:
    """The runner is not blind: a crash shows as exit 1 with a traceback, a hang as killed."""
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    script = ("import sys, cli_batch, mlflow_steps.cli.main as c\n"
              "def boom(argv=None):\n"
              "    if argv == ['crash']: raise RuntimeError('boom')\n"
              "    open(argv[1]).read()\n"
              "c.main = boom\n"
              "cli_batch.main()\n")
    request = json.dumps({"timeout": 2, "jobs": [["crash"], ["read", str(fifo)]]})
    done = subprocess.run([sys.executable, "-c", script], input=request, capture_output=True,
                          text=True, env={**ENV, "PYTHONPATH": str(SUPPORT)}, timeout=60,
                          check=False)
    crash, hang = json.loads(done.stdout)
    assert crash["code"] == 1 and "Traceback" in crash["stderr"] and "boom" in crash["stderr"]
    assert hang["timed_out"] and hang["code"] is None
