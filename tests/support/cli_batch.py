"""Run many `mlflow-steps` command lines fast, each in a process of its own.

`python cli_batch.py < jobs.json` imports the CLI once, then forks one child per job; the
child runs the console entry point (`mlflow_steps.cli.main.main`, what `mlflow-steps` and
`python -m mlflow_steps` run) with its stdout/stderr going to files, and exits as the
interpreter would (an escaping exception prints its traceback and exits 1). A child that
runs longer than the timeout (a FIFO read by mistake) is killed and reported as such.
jobs.json: {"timeout": seconds, "jobs": [[arg, ...], ...]}; prints one JSON result per job:
{"code": exit status or null, "stdout": ..., "stderr": ..., "timed_out": bool}.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import tempfile
import time
import traceback


def _child(argv: list[str], out: str, err: str) -> None:
    os.dup2(os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 1)
    os.dup2(os.open(err, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), 2)
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


def _run(argv: list[str], timeout: float, scratch: str) -> dict[str, object]:
    out, err = os.path.join(scratch, "out"), os.path.join(scratch, "err")
    sys.stdout.flush()
    sys.stderr.flush()
    pid = os.fork()
    if pid == 0:
        _child(argv, out, err)
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


if __name__ == "__main__":
    main()
