"""Helpers for the tracking-server tests (importable as `server_testing`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import mlflow
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
