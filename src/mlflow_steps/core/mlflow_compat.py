"""The one place that touches MLflow's private functions and modules.

MLflow's public API (``mlflow``, ``MlflowClient``, ``mlflow.entities``, ``mlflow.exceptions``,
the documented environment variables) is used directly. Everything else we need (the
project runner's helpers, the REST layer, the SQL store's maintenance hooks, the server's
settings) goes through the functions here, so that a new MLflow release breaks one module
and its contract test (tests/core/test_mlflow_compat.py), not the steps.

Tested ranges (declared the same in pyproject.toml): ``SUPPORTED`` for the client side
(mlflow-skinny: the runtime step), ``SERVER_SUPPORTED`` for the server extra (mlflow: its
FastAPI app, and SQLAlchemy 2.1 support in its SQL store).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import requests
    from sqlalchemy.engine import Engine

SUPPORTED = ">=3.0,<4"
SERVER_SUPPORTED = ">=3.9,<4"

# Tags every MLflow object the project's process creates (runs, logged models), via
# MLflow's MLFLOW_RUN_CONTEXT (a JSON object of tags, read by its run-context provider).
RUN_CONTEXT_VARIABLE = "MLFLOW_RUN_CONTEXT"


# --- MLflow projects (the runtime step) ---------------------------------------------------

def load_project_spec(directory: str) -> Any:
    """MLflow's own parse of ``directory``'s MLproject (its checks, its command rendering)."""
    from mlflow.projects import _project_spec  # MLflow loads only when a step talks to it

    return _project_spec.load_project(directory)


def entry_point_command(spec: Any, entry_point: str, parameters: Mapping[str, str],
                        storage_dir: str) -> str:
    """The shell command MLflow runs for ``entry_point`` with ``parameters`` (quoted)."""
    # MLflow loads only when a step talks to it
    from mlflow.projects.utils import get_entry_point_command

    return " ".join(get_entry_point_command(spec, entry_point, dict(parameters), storage_dir))


def create_project_run(project_uri: str, experiment_id: str, work_dir: str,
                       entry_point: str, parameters: Mapping[str, str]) -> Any:
    """A new run tagged as MLflow's project runner tags it (source, entry point, params)."""
    from mlflow.projects.utils import get_or_create_run  # MLflow loads only when a step talks to it

    return get_or_create_run(None, project_uri, experiment_id, work_dir, None, entry_point,
                             dict(parameters))


def project_run_environment(run_id: str, experiment_id: str) -> dict[str, str]:
    """The variables MLflow gives a project's process (MLFLOW_RUN_ID, _EXPERIMENT_ID, ...)."""
    from mlflow.projects.utils import get_run_env_vars  # MLflow loads only when a step talks to it

    return dict(get_run_env_vars(run_id, experiment_id))


# --- The REST layer (the runtime step's pre-flight check) ------------------------------------

def tracking_host_creds(tracking_uri: str) -> Any:
    """MLflow's credentials for an http(s) tracking URI (token, basic auth, TLS settings)."""
    # MLflow loads only when a step talks to it
    from mlflow.utils.credentials import get_default_host_creds

    return get_default_host_creds(tracking_uri)


def tracking_request(tracking_uri: str, endpoint: str, method: str, *, timeout: float,
                     **kwargs: Any) -> requests.Response:
    """One HTTP request to the tracking server through MLflow's REST layer (its auth
    headers, TLS settings and request-header plugins), without MLflow's retries: the
    response comes back whatever its status, so the caller sees 429 and Retry-After."""
    from mlflow.utils.rest_utils import http_request  # MLflow loads only when a step talks to it

    return http_request(tracking_host_creds(tracking_uri), endpoint, method, max_retries=0,
                        backoff_factor=0, backoff_jitter=0, timeout=timeout,
                        raise_on_status=False, respect_retry_after_header=False, **kwargs)


@contextmanager
def bounded_requests(budget: float) -> Iterator[None]:
    """For the duration, every request MLflow's REST client sends from this process is
    bounded in total by ``budget`` seconds (``deadline.BoundedAdapter``: MLflow's retries and a
    server trickling its answer included). MLflow makes its sessions in
    ``request_utils._get_request_session``; their adapters get bounded copies, and the
    originals are put back afterwards."""
    from mlflow.utils import request_utils  # MLflow loads only when a step talks to it

    # requests' adapter loads only with MLflow
    from mlflow_steps.core.deadline import BoundedAdapter

    original = request_utils._get_request_session
    swapped: list[tuple[Any, str, Any]] = []

    def bounded_session(*args: Any, **kwargs: Any) -> Any:
        session = original(*args, **kwargs)
        for prefix, adapter in list(session.adapters.items()):
            if not isinstance(adapter, BoundedAdapter):
                kind = type(f"Bounded{type(adapter).__name__}", (BoundedAdapter, type(adapter)),
                            {"budget": budget})
                bounded = kind.__new__(kind)
                bounded.__setstate__(adapter.__getstate__())  # requests' own copy of settings
                session.mount(prefix, bounded)
                swapped.append((session, prefix, adapter))
        return session

    request_utils._get_request_session = bounded_session
    try:
        yield
    finally:
        request_utils._get_request_session = original
        for session, prefix, adapter in swapped:
            session.adapters[prefix].close()
            session.mount(prefix, adapter)


# --- The SQL tracking store (server: gc, db-upgrade) -----------------------------------------

def sql_tracking_store(store_uri: str, default_artifact_root: str) -> Any:
    """MLflow's SQLAlchemy tracking store on ``store_uri``."""
    # MLflow loads only when a step talks to it
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

    return SqlAlchemyStore(store_uri, default_artifact_root)


def deleted_run_ids(store: Any, older_than_ms: int) -> list[str]:
    """Runs deleted at least ``older_than_ms`` ago (the hook `mlflow gc` uses)."""
    return list(store._get_deleted_runs(older_than=older_than_ms))


def deleted_logged_model_ids(store: Any, older_than_ms: int) -> list[str]:
    """Logged models deleted at least ``older_than_ms`` ago; none where the store has none."""
    if not hasattr(store, "_get_deleted_logged_models"):
        return []
    return list(store._get_deleted_logged_models(older_than=older_than_ms))


def deleted_logged_model(store: Any, model_id: str) -> Any:
    """A logged model, deleted or not."""
    return store.get_logged_model(model_id, allow_deleted=True)


def hard_delete_run(store: Any, run_id: str) -> None:
    """Remove a run's rows for good."""
    store._hard_delete_run(run_id)


def hard_delete_logged_model(store: Any, model_id: str) -> None:
    """Remove a logged model's rows for good."""
    store._hard_delete_logged_model(model_id)


def hard_delete_experiment(store: Any, experiment_id: str) -> None:
    """Remove an experiment's rows for good."""
    store._hard_delete_experiment(experiment_id)


def artifact_repository(artifact_uri: str) -> Any:
    """MLflow's artifact repository for ``artifact_uri`` (local, S3, ...)."""
    # MLflow loads only when a step talks to it
    from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

    return get_artifact_repository(artifact_uri)


def alembic_config(db_url: str = "") -> Any:
    """The alembic Config of MLflow's tracking-store migrations."""
    # MLflow loads only when a step talks to it
    from mlflow.store.db.utils import _get_alembic_config

    return _get_alembic_config(db_url)


def schema_revision(engine: Engine) -> str | None:
    """The store's alembic revision; None when it has no MLflow schema yet."""
    # MLflow loads only when a step talks to it
    from mlflow.store.db.utils import _get_schema_version

    return _get_schema_version(engine)


def head_schema_revision() -> str:
    """The schema revision the installed MLflow needs."""
    # MLflow loads only when a step talks to it
    from mlflow.store.db.utils import _get_latest_schema_revision

    return _get_latest_schema_revision()


def upgrade_schema(engine: Engine) -> None:
    """Run MLflow's migrations on the store up to the head revision."""
    from mlflow.store.db.utils import _upgrade_db  # MLflow loads only when a step talks to it

    _upgrade_db(engine)


# --- The tracking server (server: serve, app) ------------------------------------------------

def server_environment(*, backend_store_uri: str, registry_store_uri: str,
                       default_artifact_root: str, serve_artifacts: bool,
                       artifacts_destination: str, sgi_name: str = "uvicorn"
                       ) -> dict[str, str]:
    """The variables MLflow's server app reads its settings from (as `mlflow server` sets)."""
    try:
        from mlflow.server import constants  # MLflow loads only when a step talks to it
    except ImportError:  # before 3.8 the names lived in mlflow.server itself
        import mlflow.server as constants  # MLflow loads only when a step talks to it

    return {constants.BACKEND_STORE_URI_ENV_VAR: backend_store_uri,
            constants.REGISTRY_STORE_URI_ENV_VAR: registry_store_uri,
            constants.ARTIFACT_ROOT_ENV_VAR: default_artifact_root,
            constants.SERVE_ARTIFACTS_ENV_VAR: "true" if serve_artifacts else "false",
            constants.ARTIFACTS_DESTINATION_ENV_VAR: artifacts_destination,
            "_MLFLOW_SGI_NAME": sgi_name}


def initialize_backend_stores(backend_store_uri: str, registry_store_uri: str,
                              default_artifact_root: str) -> None:
    """Create the tracking and registry tables when missing (what `mlflow server` does).

    MLflow's initialiser also caches both stores in its handlers and points this process's
    tracking and registry URIs (and their variables) at the store; all of that is put back
    afterwards, so the caller's client keeps talking to the server it chose."""
    from mlflow.server import handlers  # MLflow loads only when a step talks to it

    # MLflow loads only when a step talks to it
    from mlflow.tracking._model_registry import utils as registry_utils

    # MLflow loads only when a step talks to it
    from mlflow.tracking._tracking_service import utils as tracking_utils

    saved = {module: module.__dict__[name] for module, name in (
        (tracking_utils, "_tracking_uri"), (registry_utils, "_registry_uri"))}
    saved_env = {key: os.environ.get(key) for key in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    handlers._tracking_store = handlers._model_registry_store = None
    try:
        handlers.initialize_backend_stores(backend_store_uri, registry_store_uri,
                                           default_artifact_root)
    finally:
        handlers._tracking_store = handlers._model_registry_store = None
        tracking_utils._tracking_uri = saved[tracking_utils]
        registry_utils._registry_uri = saved[registry_utils]
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def allowed_hosts_from_env() -> list[str] | None:
    """The Host patterns MLflow's security middleware takes from MLFLOW_SERVER_ALLOWED_HOSTS;
    None when that is not set."""
    # MLflow loads only when a step talks to it
    from mlflow.server.security_utils import get_allowed_hosts_from_env

    return get_allowed_hosts_from_env()


def default_allowed_hosts() -> list[str]:
    """The Host patterns MLflow's security middleware allows by default (loopback, private
    networks)."""
    # MLflow loads only when a step talks to it
    from mlflow.server.security_utils import get_default_allowed_hosts

    return list(get_default_allowed_hosts())


def server_asgi_app() -> Any:
    """MLflow's tracking server as an ASGI app (its FastAPI app wrapping the Flask one)."""
    from mlflow.server.fastapi_app import app  # MLflow loads only when a step talks to it

    return app
