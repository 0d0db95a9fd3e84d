"""Run many `mlflow-steps` command lines fast, each in a process of its own.

`python cli_batch.py < jobs.json` imports the CLI once, then forks one child per job; the
child runs the console entry point (`mlflow_steps.cli.main.main`, what `mlflow-steps` and
`python -m mlflow_steps` run) with its stdout/stderr going to files, and exits as the
interpreter would (an escaping exception prints its traceback and exits 1). A child that
runs longer than the timeout (a FIFO read by mistake) is killed and reported as such.
jobs.json: {"timeout": seconds, "jobs": [[arg, ...], ...]}; prints one JSON result per job:
{"code": exit status or null, "stdout": ..., "stderr": ..., "timed_out": bool}.

`python cli_batch.py --lines MODULE...` imports the MODULEs, then answers each stdin line
{"argv": [...], "env": {...}, "timeout": seconds} (a child with ``env`` as its whole
environment and no stdin) with one such result line: `Warm` drives it from a test.
"""

from __future__ import annotations

import importlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback


def _child(argv: list[str], out: str, err: str, env: dict[str, str] | None) -> None:
    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
    if env is not None:  # a --lines job: the runner's stdin carries the next jobs
        os.dup2(os.open(os.devnull, os.O_RDONLY), 0)
        os.environ.clear()
        os.environ.update(env)
    from mlflow_steps.cli.main import main

    code = 0
    try:
        sys.argv = ["mlflow-steps", *argv]
        main(argv)
    except SystemExit as exc:  # what the interpreter does with sys.exit(...)
        if exc.code is None or isinstance(exc.code, int):
            code = exc.code or 0
        else:
            print(exc.code, file=sys.stderr)
            code = 1
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        sys.stdout.flush()
        sys.stderr.flush()
    os._exit(code)


def _run(argv: list[str], timeout: float, scratch: str,
         env: dict[str, str] | None = None) -> dict[str, object]:
    out, err = os.path.join(scratch, "out"), os.path.join(scratch, "err")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, out, err, env)
    deadline = time.monotonic() + timeout
    timed_out, status = False, 0
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            _, status = os.waitpid(pid, 0)
            timed_out = True
            break
        time.sleep(0.002)
    with open(out, errors="replace") as o, open(err, errors="replace") as e:
        stdout, stderr = o.read(), e.read()
    return {"code": os.waitstatus_to_exitcode(status) if not timed_out else None,
            "stdout": stdout, "stderr": stderr, "timed_out": timed_out}


def main() -> None:
    request = json.load(sys.stdin)
    # Import what the commands import, once, before forking (each child then starts warm).
    import mlflow_steps.build.dockerfile
    import mlflow_steps.build.step
    import mlflow_steps.cli.main
    import mlflow_steps.cli.workflow  # noqa: F401

    try:
        import conda_lock.lockfile
        import conda_lock.src_parser.conda_common  # noqa: F401
    except ImportError:
        pass
    with tempfile.TemporaryDirectory() as scratch:
        results = [_run(argv, request["timeout"], scratch) for argv in request["jobs"]]
    json.dump(results, sys.stdout)


def lines(modules: list[str]) -> None:
    """--lines: ``modules`` imported once, then one job a stdin line, one result a line."""
    for module in modules:
        importlib.import_module(module)
    with tempfile.TemporaryDirectory() as scratch:
        for line in iter(sys.stdin.readline, ""):
            job = json.loads(line)
            result = _run(job["argv"], job["timeout"], scratch, job["env"])
            print(json.dumps(result), flush=True)


class Warm:
    """A --lines runner for tests: each command forked from one warm interpreter, in a
    process of its own (what `serve` execs replaces only that child)."""

    def __init__(self, modules: list[str], env: dict[str, str]) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--lines", *modules],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        text=True, env=env)

    def run(self, *args: str, env: dict[str, str],
            timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`mlflow-steps ARGS` with ``env`` as its whole environment; past ``timeout``
        seconds: killed, subprocess.TimeoutExpired."""
        job = {"argv": list(args), "env": env, "timeout": timeout}
        self.process.stdin.write(json.dumps(job) + "\n")
        self.process.stdin.flush()
        answer = self.process.stdout.readline()
        assert answer, "the runner ended"
        result = json.loads(answer)
        argv = ["mlflow-steps", *args]
        if result["timed_out"]:
            raise subprocess.TimeoutExpired(argv, timeout)
        return subprocess.CompletedProcess(argv, result["code"], result["stdout"],
                                           result["stderr"])

    def close(self) -> None:
        self.process.stdin.close()
        self.process.wait(timeout=60)
        self.process.stdout.close()


if __name__ == "__main__":
    if sys.argv[1:2] == ["--lines"]:
        lines(sys.argv[2:])
    else:
        main()
