"""`serve`: MLflow's tracking server (proxied artifacts, SQL model registry) under uvicorn.

The store and registry tables are created before uvicorn starts; the process then *becomes*
uvicorn (exec), so SIGTERM reaches it directly and shuts down gracefully. Store URI and token
travel to the workers in the environment, never on the command line.
"""

from __future__ import annotations

import os
import sys

from mlflow_steps.core import mlflow_compat
from mlflow_steps.server.check import SERVE_CHECKS, require
from mlflow_steps.server.config import TOKEN, ServerConfig, allowed_hosts

APP = "mlflow_steps.server.app:create_app"
ARTIFACT_ROOT = "mlflow-artifacts:/"
GRACEFUL_SHUTDOWN_SECONDS = 20


def server_environment(config: ServerConfig, environ: dict[str, str]) -> dict[str, str]:
    """The environment MLflow's server app reads its settings from."""
    env = {key: value for key, value in environ.items() if key != TOKEN}
    env.update(mlflow_compat.server_environment(
        backend_store_uri=config.store_uri(), registry_store_uri=config.store_uri(),
        default_artifact_root=ARTIFACT_ROOT, serve_artifacts=True,
        artifacts_destination=config.artifacts_uri(), sgi_name="uvicorn"))
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    if config.token:
        env[TOKEN] = config.token
    return env


def uvicorn_argv(config: ServerConfig) -> list[str]:
    """The uvicorn command line (no secrets in it)."""
    return [sys.executable, "-m", "uvicorn", "--factory", APP, "--host", config.host,
            "--port", str(config.port), "--workers", str(config.workers),
            "--timeout-graceful-shutdown", str(GRACEFUL_SHUTDOWN_SECONDS), "--no-server-header"]


def initialize_store(config: ServerConfig) -> None:
    """Create the tracking and model-registry tables (and sqlite/artifact dirs) if missing."""
    path = config.local_artifacts_path()
    if path:
        path.mkdir(parents=True, exist_ok=True)
    database = config.sqlite_path()
    if database:
        database.parent.mkdir(parents=True, exist_ok=True)
    mlflow_compat.initialize_backend_stores(config.store_uri(), config.store_uri(),
                                            ARTIFACT_ROOT)


def serve(config: ServerConfig, environ: dict[str, str]) -> None:
    """Check, initialise the store, then exec uvicorn (does not return)."""
    require(config, SERVE_CHECKS)
    initialize_store(config)
    print(f"mlflow-steps server: serving on {config.host}:{config.port} "
          f"({config.describe()})", file=sys.stderr, flush=True)
    print(f"mlflow-steps server: {allowed_hosts().describe()}", file=sys.stderr, flush=True)
    argv = uvicorn_argv(config)
    os.execve(argv[0], argv, server_environment(config, environ))
