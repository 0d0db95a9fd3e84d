"""The model a run really logged: its storage URL, checked, and optional registration."""

from __future__ import annotations

from dataclasses import dataclass

from mlflow_steps.errors import StepError

MODEL_FILE = "MLmodel"


@dataclass(frozen=True)
class LoggedModelRef:
    """Where the run's model is: storage URL, `models:/` URI and (MLflow 3) its id."""

    url: str
    models_uri: str
    model_id: str | None = None


def find_model(client, run, artifact_path: str) -> LoggedModelRef:
    """The model named ``artifact_path`` logged by ``run``; an error if nothing is there."""
    run_id = run.info.run_id
    models = [m for m in client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id = '{run_id}'")
        if m.name == artifact_path]
    if models:
        model = max(models, key=lambda m: m.creation_timestamp)
        files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
        if MODEL_FILE not in files:
            raise StepError(f"logged model {model.model_id} has no {MODEL_FILE} at "
                            f"{model.artifact_location}", field="mlflow_artifact_path")
        return LoggedModelRef(model.artifact_location, f"models:/{model.model_id}",
                              model.model_id)
    files = {f.path for f in client.list_artifacts(run_id, artifact_path)}
    if f"{artifact_path}/{MODEL_FILE}" in files:
        url = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        return LoggedModelRef(url, f"runs:/{run_id}/{artifact_path}")
    raise StepError(f"run {run_id} logged no model named '{artifact_path}' (neither a "
                    f"LoggedModel nor run artifacts '{artifact_path}/{MODEL_FILE}')",
                    field="mlflow_artifact_path")


@dataclass(frozen=True)
class Registration:
    """Register the model under ``name``; optionally an alias, tags and a description."""

    name: str
    alias: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    description: str | None = None


def parse_tags(text: str | None) -> tuple[tuple[str, str], ...]:
    """``k=v,k2=v2`` (or space separated, shell quoting) → pairs."""
    from mlflow_steps.runtime.args import split_args

    try:
        return tuple(split_args(text or ""))
    except StepError as exc:
        raise StepError(exc.detail, field="mlflow_model_tags") from None


def register(client, model: LoggedModelRef, registration: Registration) -> str:
    """Create a model version with the alias/tags/description; its `models:/` URI."""
    import mlflow

    version = mlflow.register_model(model.models_uri, registration.name,
                                    tags=dict(registration.tags) or None)
    if registration.description:
        client.update_model_version(registration.name, version.version,
                                    description=registration.description)
    if registration.alias:
        client.set_registered_model_alias(registration.name, registration.alias,
                                          version.version)
        return f"models:/{registration.name}@{registration.alias}"
    return f"models:/{registration.name}/{version.version}"
