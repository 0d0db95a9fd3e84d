"""The model a run really logged: its storage URL, checked, and optional registration."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from mlflow_steps.core.errors import StepError
from mlflow_steps.runtime.args import split_args

MODEL_FILE = "MLmodel"
FIELD = "mlflow_artifact_path"
# Tag on everything the project's process creates (via MLFLOW_RUN_CONTEXT): the step's run id.
RUN_TAG = "mlflow_steps.run_id"


@dataclass(frozen=True)
class LoggedModelRef:
    """Where the run's model is: storage URL, `models:/` URI and (MLflow 3) its id."""

    url: str
    models_uri: str
    model_id: str | None = None


def _logged_models(client, experiment_id: str, filter_string: str) -> list:
    """Every logged model of the experiment matching ``filter_string`` (all pages)."""
    models, token = [], None
    while True:
        page = client.search_logged_models(experiment_ids=[experiment_id],
                                           filter_string=filter_string, page_token=token)
        models.extend(page)
        token = page.token
        if not token:
            return models


def _checked(client, model) -> LoggedModelRef:
    files = {f.path for f in client.list_logged_model_artifacts(model.model_id)}
    if MODEL_FILE not in files:
        raise StepError(f"logged model {model.model_id} has no {MODEL_FILE} at "
                        f"{model.artifact_location}", field=FIELD)
    return LoggedModelRef(model.artifact_location, f"models:/{model.model_id}", model.model_id)


def _newest(models: list, name: str):
    named = [m for m in models if m.name == name]
    return max(named, key=lambda m: m.creation_timestamp) if named else None


def find_model(client, run, artifact_path: str,
               warn: Callable[[str], None] = lambda _message: None) -> LoggedModelRef:
    """The model named ``artifact_path`` that ``run``'s process logged; an error if none.

    In order: a LoggedModel whose source run is ``run`` (MLflow 3, logged inside the run);
    run artifacts ``<artifact_path>/MLmodel`` (MLflow 2 style, or saved and logged as
    artifacts); a LoggedModel the process created outside any run (MLflow 3's
    ``log_model`` without an active run links it to no run): it carries the tag
    ``RUN_TAG = <run id>`` that the step gives everything the process creates.
    """
    run_id, experiment_id = run.info.run_id, run.info.experiment_id
    linked = _logged_models(client, experiment_id, f"source_run_id = '{run_id}'")
    model = _newest(linked, artifact_path)
    if model is not None:
        return _checked(client, model)
    files = {f.path for f in client.list_artifacts(run_id, artifact_path)}
    if f"{artifact_path}/{MODEL_FILE}" in files:
        url = f"{run.info.artifact_uri.rstrip('/')}/{artifact_path}"
        return LoggedModelRef(url, f"runs:/{run_id}/{artifact_path}")
    unlinked = [m for m in _logged_models(client, experiment_id,
                                          f"tags.`{RUN_TAG}` = '{run_id}'")
                if m.source_run_id != run_id]
    model = _newest(unlinked, artifact_path)
    if model is not None:
        ref = _checked(client, model)
        warn(f"logged model {model.model_id} ('{artifact_path}') is not linked to run "
             f"{run_id}: the project logged it outside a run, so MLflow 3 recorded no source "
             "run (the run shows no model, a registered version no run id). To link it, log "
             "it inside `with mlflow.start_run():` (that resumes the run this step started)")
        return ref
    others = sorted({f"'{m.name}'" for m in linked + unlinked})
    if others:
        raise StepError(f"run {run_id} logged no model named '{artifact_path}', but "
                        f"{', '.join(others)}: set {FIELD} to the model's name", field=FIELD)
    raise StepError(f"run {run_id} logged no model named '{artifact_path}' (neither a "
                    f"LoggedModel nor run artifacts '{artifact_path}/{MODEL_FILE}'): log it "
                    f"with mlflow.<flavor>.log_model(model, name='{artifact_path}')",
                    field=FIELD)


@dataclass(frozen=True)
class Registration:
    """Register the model under ``name``; optionally an alias, tags and a description."""

    name: str
    alias: str | None = None
    tags: tuple[tuple[str, str], ...] = ()
    description: str | None = None


def parse_tags(text: str | None) -> tuple[tuple[str, str], ...]:
    """``k=v,k2=v2`` (or space separated, shell quoting) → pairs."""
    try:
        return tuple(split_args(text or ""))
    except StepError as exc:
        raise StepError(exc.detail, field="mlflow_model_tags") from None


def register(client, model: LoggedModelRef, registration: Registration) -> str:
    """Create a model version with the alias/tags/description; its `models:/` URI."""
    import mlflow  # MLflow loads only when a step talks to it

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
