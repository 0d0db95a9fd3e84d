"""The runtime step: validate inputs, run the entry point as an MLflow run, find its model."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mlflow_steps import __version__
from mlflow_steps.core import mlflow_compat
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import Interrupted, check, child, deferred
from mlflow_steps.core.terminal import escape
from mlflow_steps.env.project import load_project
from mlflow_steps.runtime.args import resolve_parameters, select_entry_point, split_args
from mlflow_steps.runtime.experiment import resolve_experiment
from mlflow_steps.runtime.model import (
    RUN_TAG,
    LoggedModelRef,
    Registration,
    find_model,
    register,
)
from mlflow_steps.runtime.tracking import (
    bounded_http,
    check_reachable,
    mlflow_error_line,
    process_environment,
    redactor,
    tracking_uri,
)

RELAY_GRACE_SECONDS = 5
LAST_LINE_CHARS = 300
CANNOT_START = {126: "not executable", 127: "command not found"}  # the shell's exit codes
# MLflow prints "View run <url>" on stdout as it ends a run: the step's stdout is its result,
# and the URL would carry the tracking URI's user-info.
QUIET_RUN_END = {"MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true"}


@dataclass(frozen=True)
class RuntimeInputs:
    """The runtime step's inputs (FuseML names plus ours)."""

    mlflow_experiment: str | None = None
    mlflow_entrypoint: str = "main"
    mlflow_entrypoint_args: str = ""
    mlflow_artifact_path: str = "model"
    registration: Registration | None = None
    verbose: bool = False


@dataclass(frozen=True)
class RuntimeOutcome:
    """What the step reports."""

    run_id: str
    model: LoggedModelRef
    registered_uri: str | None


def log(message: str) -> None:
    """One line of ours on stderr; values in it from outside (parameters, tags) escaped."""
    print(f"mlflow-steps: {escape(message)}", file=sys.stderr, flush=True)


def _relay(stream: IO[bytes], mask: Callable[[str], str], last: list[str]) -> None:
    """The project's output, line by line, credentials masked, onto our stderr; ``last``
    holds its last non-blank line."""
    with stream:
        for raw in iter(stream.readline, b""):
            line = mask(raw.decode(errors="replace").rstrip("\n"))
            sys.stderr.write(line + "\n")
            sys.stderr.flush()
            if line.strip():
                last[:] = [line.strip()]


def _execute(command: str, codeset: Path, env: dict[str, str],
             mask: Callable[[str], str]) -> tuple[int, str]:
    """Run the entry point command (MLflow's `bash -c` form) with live output: its exit
    code and last line of output.

    Its stdout and stderr go, masked (MLflow prints the tracking URI, user-info and all),
    to our stderr, so the step's stdout holds only the result. The command leads a process
    group of its own, ended when the step is interrupted (``interrupt.child``).
    """
    last: list[str] = []
    with child(["bash", "-c", command], cwd=codeset, env=env, stdout=subprocess.PIPE,
               stderr=subprocess.STDOUT) as process:
        # The relay closes the pipe: closed under its blocked read, close would wait for it
        output, process.stdout = process.stdout, None
        relay = threading.Thread(target=_relay, args=(output, mask, last), daemon=True)
        relay.start()
    relay.join(RELAY_GRACE_SECONDS)  # a left-behind child may hold the pipe open
    # bash's own messages name their line ("bash: line 1: x: command not found")
    reason = re.sub(r"^bash: line \d+: ", "", last[0])[:LAST_LINE_CHARS] if last else ""
    return process.returncode, reason


def _exit_failure(entry_point: str, code: int, last_line: str) -> str:
    """Why the entry point failed, in words: how it ended and its last line of output."""
    if code < 0:
        how = f"was ended by {signal.Signals(-code).name}"
    elif code in CANNOT_START:
        how, last_line = f"could not start (exit code {code})", last_line or CANNOT_START[code]
    else:
        how = f"exited with code {code}"
    return f"entry point '{entry_point}' {how}" + (f": {last_line}" if last_line else "")


def context_tags(environ: dict[str, str]) -> dict:
    """The user's MLFLOW_RUN_CONTEXT tags (MLflow puts them on what a process creates)."""
    raw = environ.get(mlflow_compat.RUN_CONTEXT_VARIABLE, "").strip()
    try:
        tags = json.loads(raw) if raw else {}
    except ValueError:
        tags = None
    if not isinstance(tags, dict):
        raise StepError("is not a JSON object of tags", source=mlflow_compat.RUN_CONTEXT_VARIABLE)
    return tags


# What the image and the workflow tell the step about the environment it runs in.
IMAGE_TAG_VARIABLES = {"MLFLOW_STEPS_ENV_TAG": "mlflow_steps.env_tag",
                       "MLFLOW_STEPS_IMAGE": "mlflow_steps.image",
                       "MLFLOW_STEPS_IMAGE_DIGEST": "mlflow_steps.image_digest"}


def image_tags(environ: dict[str, str]) -> dict[str, str]:
    """Tags tracing a run and its models back to the image: env tag, image, digest, tooling."""
    tags = {tag: environ[name].strip() for name, tag in IMAGE_TAG_VARIABLES.items()
            if environ.get(name, "").strip()}
    return {**tags, "mlflow_steps.tooling_version": __version__}


@contextlib.contextmanager
def _ended_on_failure(client, run_id: str) -> Iterator[None]:
    """Whatever leaves the block early (an entry point that failed or could not start, a
    tracking server that stopped answering, a signal) ends the run we created: KILLED when
    the step was interrupted, else FAILED; never RUNNING, as far as the server still answers
    (within the budget, and the exit deadline after a signal)."""
    from mlflow.entities import RunStatus  # MLflow loads only when a step talks to it

    try:
        check()  # a signal while the run was created
        yield
    except BaseException as failure:
        interrupted = isinstance(failure, Interrupted | KeyboardInterrupt)
        status = RunStatus.KILLED if interrupted else RunStatus.FAILED
        try:
            client.set_terminated(run_id, RunStatus.to_string(status))
        except Exception as exc:  # the failure being raised says what went wrong first
            log(f"warning: run {run_id} could not be marked {RunStatus.to_string(status)}: "
                f"{mlflow_error_line(exc)}")
        raise


def run_runtime(codeset: Path, inputs: RuntimeInputs,
                environ: dict[str, str] | None = None) -> RuntimeOutcome:
    """Run ``codeset``'s entry point against the tracking server; the model it logged."""
    environ = dict(os.environ if environ is None else environ)
    if not codeset.is_dir():
        raise StepError("codeset directory not found", source=str(codeset))
    project = load_project(codeset)
    entry = select_entry_point(project, inputs.mlflow_entrypoint)
    parameters = resolve_parameters(entry, split_args(inputs.mlflow_entrypoint_args), environ)
    context_tags(environ)
    uri = tracking_uri(environ, codeset)
    with bounded_http(environ) as http, process_environment(QUIET_RUN_END):
        return _run(codeset, inputs, environ, project, entry.name, parameters, uri, http)


def _run(codeset: Path, inputs: RuntimeInputs, environ: dict[str, str], project,
         entry_point: str, parameters: dict[str, str], uri: str,
         http: dict[str, str]) -> RuntimeOutcome:
    import mlflow  # MLflow loads only when a step talks to it
    from mlflow.entities import RunStatus  # MLflow loads only when a step talks to it


    spec = mlflow_compat.load_project_spec(str(codeset))  # MLflow's own checks, before any call
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    check_reachable(client, uri, environ)
    experiment_id = resolve_experiment(client, inputs.mlflow_experiment, codeset, project.name)
    mask = redactor(environ)
    if inputs.verbose:
        log(mask(f"tracking {uri}, experiment {experiment_id}, entry point {entry_point}, "
                 f"parameters {parameters}"))

    with deferred():  # a signal meanwhile is raised in the block that ends the run
        run_id = mlflow_compat.create_project_run(str(codeset), experiment_id, str(codeset),
                                                  entry_point, parameters).info.run_id
    with _ended_on_failure(client, run_id):
        traced = image_tags(environ)
        for key, value in traced.items():
            client.set_tag(run_id, key, value)
        with tempfile.TemporaryDirectory(prefix="mlflow-steps-run-") as storage:
            command = mlflow_compat.entry_point_command(spec, entry_point, parameters, storage)
            log(mask(f"run {run_id}: {command}"))
            child_env = {**environ, **http, "MLFLOW_TRACKING_URI": uri,
                         **mlflow_compat.project_run_environment(run_id, experiment_id),
                         # RUN_TAG marks a model the project logs outside the run as its own
                         mlflow_compat.RUN_CONTEXT_VARIABLE: json.dumps(
                             {**context_tags(environ), **traced, RUN_TAG: run_id})}
            try:
                exit_code, last_line = _execute(command, codeset, child_env, mask)
            except OSError as exc:  # no bash in the image, ...
                raise StepError(f"entry point '{entry_point}' could not start: "
                                f"{exc.filename}: {exc.strerror}; run {run_id} is marked "
                                "FAILED") from None
        # A non-zero exit fails the run even when the project's own MLflow client closed it
        # as FINISHED on its way out (MLflow's atexit hook does that on sys.exit).
        if exit_code != 0:
            raise StepError(f"{_exit_failure(entry_point, exit_code, last_line)}; run "
                            f"{run_id} is marked FAILED",
                            exit_code=exit_code if exit_code > 0 else 128 - exit_code)
        if not RunStatus.is_terminated(
                RunStatus.from_string(client.get_run(run_id).info.status)):
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    model = find_model(client, client.get_run(run_id), inputs.mlflow_artifact_path,
                       warn=lambda message: log(f"warning: {message}"))
    registered = (register(client, model, inputs.registration)
                  if inputs.registration else None)
    return RuntimeOutcome(run_id, model, registered)
