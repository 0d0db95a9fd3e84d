"""Helpers for the tracking-server tests (importable as `server_testing`)."""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
from devstack import CACHE
from mlflow import MlflowClient

# Variables that must not leak from the test process into clients or servers.
SCRUBBED = ("MLFLOW_", "AWS_")


def clean_env(**values: str) -> dict[str, str]:
    """os.environ without MLflow/AWS settings, plus ``values``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(SCRUBBED)}
    return {**env, **values}


@contextlib.contextmanager
def tracking(url: str, token: str | None = None):
    """Point this process's MLflow client at ``url`` (with ``token``), then restore."""
    saved = {k: v for k, v in os.environ.items() if k.startswith(SCRUBBED)}
    for key in saved:
        del os.environ[key]
    os.environ["MLFLOW_TRACKING_URI"] = url
    if token:
        os.environ["MLFLOW_TRACKING_TOKEN"] = token
    mlflow.set_tracking_uri(url)
    mlflow.set_registry_uri(url)
    try:
        yield MlflowClient(url, url)
    finally:
        for key in [k for k in os.environ if k.startswith(SCRUBBED)]:
            del os.environ[key]
        os.environ.update(saved)
        mlflow.set_tracking_uri(None)
        mlflow.set_registry_uri(None)


_CREATE_STORE = """
import sys
from mlflow_steps.server.config import ServerConfig
from mlflow_steps.server.serve import initialize_store
initialize_store(ServerConfig(backend_store_uri=sys.argv[1], artifacts_destination=sys.argv[2]))
"""


@functools.cache
def _store_template() -> Path:
    """A sqlite store as `serve` creates it, made once per test process (in a process of its
    own: MLflow keeps the first store it opens, and its tracking URI, global)."""
    directory = Path(tempfile.mkdtemp(prefix="mls-store-"))
    atexit.register(shutil.rmtree, directory, True)
    database = directory / "mlflow.db"
    result = subprocess.run([sys.executable, "-c", _CREATE_STORE, f"sqlite:///{database}",
                             str(directory / "artifacts")], capture_output=True, text=True,
                            env=clean_env(), check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    return database


def create_store(store_uri: str, artifacts_destination: str) -> None:
    """The sqlite store and artifact directory as `serve` leaves them before it starts uvicorn:
    a copy of the template `initialize_store` made (an MLflow start-up and a schema migration
    once per test process, not per store)."""
    assert store_uri.startswith("sqlite:///"), store_uri
    database = Path(store_uri.removeprefix("sqlite:///"))
    database.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(_store_template(), database)
    Path(artifacts_destination).mkdir(parents=True, exist_ok=True)


def log_run_with_artifact(client: MlflowClient, experiment_id: str, tmp: Path,
                          name: str) -> str:
    """A finished run with a param, a metric and one artifact file; its id."""
    run = client.create_run(experiment_id, run_name=name)
    run_id = run.info.run_id
    client.log_param(run_id, "name", name)
    client.log_metric(run_id, "score", 0.5)
    artifact = tmp / f"{name}.txt"
    artifact.write_text(f"artifact of {name}\n")
    client.log_artifact(run_id, str(artifact), "files")
    client.set_terminated(run_id)
    return run_id


def stored_artifacts(destination: str, s3=None) -> set[str]:
    """Paths of the files under an artifact destination (a local dir, or s3:// via ``s3``)."""
    if not destination.startswith("s3://"):
        root = Path(destination)
        return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file()}
    bucket, _, prefix = destination.removeprefix("s3://").partition("/")
    listing = s3.client().list_objects_v2(Bucket=bucket, Prefix=prefix)
    return {obj["Key"].removeprefix(prefix).lstrip("/") for obj in listing.get("Contents", [])}


# A store written by an older MLflow release, for db-upgrade.
OLD_MLFLOW = "2.9.2"
OLD_REQUIREMENTS = (f"mlflow-skinny=={OLD_MLFLOW}", "sqlalchemy<2", "alembic<1.14",
                    "psycopg2-binary")
OLD_REVISION = "acf3f17fdcc7"  # the head schema of MLflow 2.9
OLD_WRITER = '''
import json, sys
from mlflow import MlflowClient
client = MlflowClient(sys.argv[1], sys.argv[1])
experiment_id = client.create_experiment("legacy", tags={"origin": "old"})
runs = {}
for i in range(3):
    run_id = client.create_run(experiment_id, tags={"index": str(i)}).info.run_id
    client.log_param(run_id, "alpha", str(i / 10))
    for step in range(5):
        client.log_metric(run_id, "loss", 1.0 / (step + 1 + i), step=step)
    client.set_terminated(run_id)
    runs[run_id] = i
client.create_registered_model("legacy-model", description="from 2.9")
version = client.create_model_version("legacy-model", "s3://bucket/legacy/model",
                                      run_id=next(iter(runs)))
client.set_model_version_tag("legacy-model", version.version, "quality", "good")
print(json.dumps(runs))
'''


def write_old_store(old_python: Path, uri: str) -> dict[str, int]:
    """Fill ``uri`` with the older MLflow; {run_id: index}."""
    result = subprocess.run([str(old_python), "-c", OLD_WRITER, uri], capture_output=True,
                            text=True, env=clean_env(), check=False, timeout=300)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def older_mlflow_python() -> Path:
    """Python of a venv with the older MLflow (cached; built when missing)."""
    venv = CACHE / f"venv-mlflow-skinny-{OLD_MLFLOW}"
    python = venv / "bin" / "python"
    if not (venv / ".complete").exists():
        shutil.rmtree(venv, ignore_errors=True)
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", *OLD_REQUIREMENTS],
                       check=True, capture_output=True)
        (venv / ".complete").write_text(" ".join(OLD_REQUIREMENTS))
    return python
