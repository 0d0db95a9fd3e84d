"""The runtime step: validate inputs, run the entry point as an MLflow run, find its model."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.errors import StepError
from mlflow_steps.parse.project import load_project
from mlflow_steps.runtime.args import resolve_parameters, select_entry_point, split_args
from mlflow_steps.runtime.experiment import resolve_experiment
from mlflow_steps.runtime.model import LoggedModelRef, Registration, find_model, register
from mlflow_steps.runtime.tracking import check_reachable, redact, tracking_uri


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
    print(f"mlflow-steps: {message}", file=sys.stderr, flush=True)


def _execute(command: str, codeset: Path, env: dict[str, str]) -> int:
    """Run the entry point command (MLflow's `bash -c` form) with live output.

    Its stdout goes to our stderr, so the step's stdout holds only the result. SIGTERM and
    SIGINT to the step are passed on to the command's process group.
    """
    process = subprocess.Popen(["bash", "-c", command], cwd=codeset, env=env,
                               stdout=sys.stderr, start_new_session=True)

    def forward(signum: int, _frame: object) -> None:
        os.killpg(process.pid, signum)

    previous = {s: signal.signal(s, forward) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        return process.wait()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def run_runtime(codeset: Path, inputs: RuntimeInputs,
                environ: dict[str, str] | None = None) -> RuntimeOutcome:
    """Run ``codeset``'s entry point against the tracking server; the model it logged."""
    import mlflow
    from mlflow.entities import RunStatus
    from mlflow.projects import _project_spec
    from mlflow.projects.utils import get_entry_point_command, get_or_create_run, get_run_env_vars

    environ = dict(os.environ if environ is None else environ)
    if not codeset.is_dir():
        raise StepError("codeset directory not found", source=str(codeset))
    project = load_project(codeset)
    spec = _project_spec.load_project(str(codeset))  # MLflow's own checks, before any call
    entry = select_entry_point(project, inputs.mlflow_entrypoint)
    parameters = resolve_parameters(entry, split_args(inputs.mlflow_entrypoint_args), environ)

    uri = tracking_uri(environ, codeset)
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    check_reachable(client, uri)
    experiment_id = resolve_experiment(client, inputs.mlflow_experiment, codeset, project.name)
    if inputs.verbose:
        log(f"tracking {redact(uri)}, experiment {experiment_id}, entry point {entry.name}, "
            f"parameters {parameters}")

    run = get_or_create_run(None, str(codeset), experiment_id, str(codeset), None, entry.name,
                            parameters)
    run_id = run.info.run_id
    with tempfile.TemporaryDirectory(prefix="mlflow-steps-run-") as storage:
        command = " ".join(get_entry_point_command(spec, entry.name, parameters, storage))
        log(f"run {run_id}: {command}")
        child_env = {**environ, "MLFLOW_TRACKING_URI": uri,
                     **get_run_env_vars(run_id, experiment_id)}
        exit_code = _execute(command, codeset, child_env)
    # A non-zero exit fails the run even when the project's own MLflow client closed it as
    # FINISHED on its way out (MLflow's atexit hook does that on sys.exit).
    if exit_code != 0:
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))
    elif not RunStatus.is_terminated(RunStatus.from_string(client.get_run(run_id).info.status)):
        client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))
    if exit_code != 0:
        raise StepError(f"entry point '{entry.name}' exited with code {exit_code}; run "
                        f"{run_id} is marked FAILED",
                        exit_code=exit_code if exit_code > 0 else 128 - exit_code)

    model = find_model(client, client.get_run(run_id), inputs.mlflow_artifact_path)
    registered = (register(client, model, inputs.registration)
                  if inputs.registration else None)
    return RuntimeOutcome(run_id, model, registered)
