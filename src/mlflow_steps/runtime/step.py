"""The runtime step: validate inputs, run the entry point as an MLflow run, find its model."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from mlflow_steps import __version__
from mlflow_steps.core import mlflow_compat
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import on_signals
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
    redactor,
    tracking_uri,
)

RELAY_GRACE_SECONDS = 5


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


def _relay(stream: IO[bytes], mask: Callable[[str], str]) -> None:
    """The project's output, line by line, credentials masked, onto our stderr."""
    for raw in iter(stream.readline, b""):
        sys.stderr.write(mask(raw.decode(errors="replace").rstrip("\n")) + "\n")
        sys.stderr.flush()


def _execute(command: str, codeset: Path, env: dict[str, str],
             mask: Callable[[str], str]) -> int:
    """Run the entry point command (MLflow's `bash -c` form) with live output.

    Its stdout and stderr go, masked (MLflow prints the tracking URI, user-info and all),
    to our stderr, so the step's stdout holds only the result. SIGTERM and SIGINT to the
    step are passed on to the command's process group.
    """
    process = subprocess.Popen(["bash", "-c", command], cwd=codeset, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               start_new_session=True)
    relay = threading.Thread(target=_relay, args=(process.stdout, mask), daemon=True)
    relay.start()

    def forward(signum: int, _frame: object) -> None:
        os.killpg(process.pid, signum)

    with on_signals(forward):
        code = process.wait()
    relay.join(RELAY_GRACE_SECONDS)  # a left-behind child may hold the pipe open
    return code


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


def _mark_failed(client, run_id: str) -> None:
    """After a failure of ours (a tracking server that stopped answering, ...): the run we
    created is not left RUNNING, as far as the server still answers (within the budget)."""
    from mlflow.entities import RunStatus  # MLflow loads only when a step talks to it


    try:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    except Exception as exc:  # the failure being raised says what went wrong first
        log(f"warning: run {run_id} could not be marked FAILED: {mlflow_error_line(exc)}")


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
    with bounded_http(environ) as http:
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

    run = mlflow_compat.create_project_run(str(codeset), experiment_id, str(codeset),
                                           entry_point, parameters)
    run_id = run.info.run_id
    try:
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
            exit_code = _execute(command, codeset, child_env, mask)
        # A non-zero exit fails the run even when the project's own MLflow client closed it
        # as FINISHED on its way out (MLflow's atexit hook does that on sys.exit).
        if exit_code != 0:
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
        elif not RunStatus.is_terminated(
                RunStatus.from_string(client.get_run(run_id).info.status)):
            client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    except Exception:
        _mark_failed(client, run_id)
        raise
    if exit_code != 0:
        raise StepError(f"entry point '{entry_point}' exited with code {exit_code}; run "
                        f"{run_id} is marked FAILED",
                        exit_code=exit_code if exit_code > 0 else 128 - exit_code)

    model = find_model(client, client.get_run(run_id), inputs.mlflow_artifact_path,
                       warn=lambda message: log(f"warning: {message}"))
    registered = (register(client, model, inputs.registration)
                  if inputs.registration else None)
    return RuntimeOutcome(run_id, model, registered)
