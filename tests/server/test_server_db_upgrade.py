"""`server db-upgrade` for real: stores written by an older MLflow release, upgraded by ours.

The older MLflow lives in a venv cached under ~/.cache/mlflow-steps (made here when missing).
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import sqlalchemy
from mlflow import MlflowClient
from support.helpers import run_cli
from support.server_testing import OLD_REVISION, clean_env, write_old_store

from mlflow_steps.server import store
from mlflow_steps.server.config import ServerConfig


def revision(uri: str) -> str | None:
    with store.engine(ServerConfig(backend_store_uri=uri)) as engine:
        return store.current_revision(engine)


def assert_old_data_intact(uri: str, runs: dict[str, int]) -> None:
    client = MlflowClient(uri, uri)
    experiment = client.get_experiment_by_name("legacy")
    assert experiment.tags["origin"] == "old"
    found = client.search_runs([experiment.experiment_id])
    assert {run.info.run_id for run in found} == set(runs)
    for run in found:
        i = runs[run.info.run_id]
        assert run.data.params == {"alpha": str(i / 10)}
        assert run.data.tags["index"] == str(i)
        history = client.get_metric_history(run.info.run_id, "loss")
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == [
            1.0 / (step + 1 + i) for step in range(5)]
    version = client.get_model_version("legacy-model", "1")
    assert (version.source, version.tags) == ("s3://bucket/legacy/model", {"quality": "good"})
    assert client.get_registered_model("legacy-model").description == "from 2.9"


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sqlite_store_from_older_mlflow(old_python: Path, tmp_path: Path) -> None:
    database = tmp_path / "store" / "old.sqlite"
    database.parent.mkdir()
    uri = f"sqlite:///{database}"
    runs = write_old_store(old_python, uri)
    assert revision(uri) == OLD_REVISION
    # `check` judges what `serve` would do: on loopback no token is needed
    env = clean_env(MLFLOW_BACKEND_STORE_URI=uri, MLFLOW_HOST="127.0.0.1",
                    MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"))

    stale = run_cli("server", "check", env=env)
    assert stale.returncode == 2
    assert f"schema at revision {OLD_REVISION}" in stale.stderr and "db-upgrade" in stale.stderr

    before = _sha256(database)
    dry = run_cli("server", "db-upgrade", "--dry-run", env=env)
    assert dry.returncode == 0, dry.stderr
    head = store.head_revision()
    assert f"from {OLD_REVISION} to {head}" in dry.stdout
    listed = [line.split()[0] for line in dry.stdout.splitlines() if line.startswith("  ")]
    assert listed[-1] == head and OLD_REVISION not in listed
    assert _sha256(database) == before and revision(uri) == OLD_REVISION

    backups = tmp_path / "backups"
    result = run_cli("server", "db-upgrade", "--backup-dir", str(backups), env=env)
    assert result.returncode == 0, result.stderr
    assert f"upgraded from {OLD_REVISION} to {head}" in result.stdout
    (backup,) = backups.iterdir()
    assert _sha256(backup) == before
    assert revision(f"sqlite:///{backup}") == OLD_REVISION
    assert revision(uri) == head
    assert_old_data_intact(uri, runs)
    assert run_cli("server", "check", env=env).returncode == 0

    again = run_cli("server", "db-upgrade", "--backup-dir", str(backups), env=env)
    assert f"already at {head}" in again.stdout and len(list(backups.iterdir())) == 1


def test_postgres_store_from_older_mlflow(old_python: Path, postgres, tmp_path: Path) -> None:
    driver_url = postgres.create_database("legacy")
    uri = driver_url.replace("+psycopg2", "")
    runs = write_old_store(old_python, uri)
    env = clean_env(MLFLOW_BACKEND_STORE_URI=uri,
                    MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts"))
    backups = tmp_path / "backups"

    no_pg_dump = {**env, "PATH": str(tmp_path / "empty-path")}
    refused = run_cli("server", "db-upgrade", "--backup-dir", str(backups), env=no_pg_dump)
    assert refused.returncode == 2 and "pg_dump not found" in refused.stderr
    assert "--no-backup" in refused.stderr and postgres.password not in refused.stderr
    assert revision(driver_url) == OLD_REVISION

    result = run_cli("server", "db-upgrade", "--backup-dir", str(backups), env=env)
    assert result.returncode == 0, result.stderr
    assert postgres.password not in result.stdout + result.stderr
    head = store.head_revision()
    assert f"upgraded from {OLD_REVISION} to {head}" in result.stdout
    (dump,) = backups.iterdir()
    listing = subprocess.run(["pg_restore", "--list", str(dump)], capture_output=True, text=True,
                             check=True).stdout
    assert "TABLE public runs" in listing and "TABLE public alembic_version" in listing
    assert revision(driver_url) == head
    assert_old_data_intact(driver_url, runs)


def test_no_backup_skips_the_backup(old_python: Path, postgres, tmp_path: Path) -> None:
    uri = postgres.create_database("legacy_nobackup")
    write_old_store(old_python, uri.replace("+psycopg2", ""))
    backups = tmp_path / "backups"
    result = run_cli("server", "db-upgrade", "--no-backup", "--backup-dir", str(backups),
                     env=clean_env(MLFLOW_BACKEND_STORE_URI=uri,
                                   PATH=str(tmp_path / "empty-path")))
    assert result.returncode == 0, result.stderr
    assert not backups.exists() and revision(uri) == store.head_revision()


def test_fresh_store_has_nothing_to_upgrade(tmp_path: Path) -> None:
    database = tmp_path / "empty.sqlite"
    sqlalchemy.create_engine(f"sqlite:///{database}").connect().close()
    result = run_cli("server", "db-upgrade", "--backup-dir", str(tmp_path / "backups"),
                     env=clean_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{database}"))
    assert result.returncode == 0 and "no MLflow schema yet" in result.stdout
    assert os.listdir(tmp_path) == ["empty.sqlite"]
    assert revision(f"sqlite:///{database}") is None
