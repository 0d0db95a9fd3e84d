"""Which MLflow experiment a run goes to: the input, else FuseML's <org>.<project>."""

from __future__ import annotations

import sys
from pathlib import Path

from mlflow_steps.core.errors import StepError

FIELD = "mlflow_experiment"


def default_experiment_name(codeset: Path, project_name: str | None) -> str:
    """``<org>.<project>`` from .fuseml/_org and _project (FuseML), else the MLproject name."""
    fuseml = codeset / ".fuseml"
    parts = []
    for name in ("_org", "_project"):
        path = fuseml / name
        if path.is_file():
            parts.append(path.read_text(errors="replace").strip())
    if len(parts) == 2 and all(parts):
        return ".".join(parts)
    if project_name:
        return project_name
    raise StepError("no experiment: set mlflow_experiment, or give MLproject a 'name'",
                    field=FIELD)


def resolve_experiment(client, requested: str | None, codeset: Path,
                       project_name: str | None) -> str:
    """The experiment id to run in; created when missing, restored when deleted."""
    from mlflow.exceptions import MlflowException  # MLflow loads only when a step talks to it

    requested = (requested or "").strip()
    if requested.isdigit():
        try:
            experiment = client.get_experiment(requested)
        except MlflowException:
            raise StepError(f"no experiment with id {requested}", field=FIELD) from None
        if experiment.lifecycle_stage == "deleted":
            raise StepError(f"experiment {requested} ('{experiment.name}') is deleted; restore "
                            "it or pass another", field=FIELD)
        return experiment.experiment_id
    name = requested or default_experiment_name(codeset, project_name)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        try:
            return client.create_experiment(name)
        except MlflowException:  # created meanwhile by a concurrent run
            experiment = client.get_experiment_by_name(name)
            if experiment is None:
                raise

    if experiment.lifecycle_stage == "deleted":
        client.restore_experiment(experiment.experiment_id)
        print(f"mlflow-steps: experiment '{name}' was deleted (not yet garbage-collected); "
              "restored it", file=sys.stderr)
    return experiment.experiment_id
