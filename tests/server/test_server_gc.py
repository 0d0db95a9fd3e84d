"""`server gc` for real: TTL boundaries, dry run, artifacts, freed names, `--every`.

Runs and experiments are made and deleted through a running server; their deletion times
are then moved into the past in the store itself, one minute either side of the TTL.
"""

from __future__ import annotations

import signal
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import sqlalchemy
from devservices import TrackingServer
from devstack import start, wait_until
from mlflow.exceptions import MlflowException
from support.helpers import run_cli
from support.server_testing import (
    clean_env,
    create_store,
    log_run_with_artifact,
    stored_artifacts,
    tracking,
)

TTL = "1d"
DAY_MS = 86_400_000
MINUTE_MS = 60_000


@dataclass
class Store:
    server: TrackingServer
    url: str
    destination: str
    s3: object | None

    def env(self, **values: str) -> dict[str, str]:
        storage = self.s3.client_env() if self.s3 else {}
        return clean_env(MLFLOW_BACKEND_STORE_URI=self.url,
                         MLFLOW_ARTIFACTS_DESTINATION=self.destination,
                         MLFLOW_TRACKING_GC_TTL=TTL, **storage, **values)

    def update(self, table: str, key: str, ident: str, column: str, value: object) -> None:
        """Set ``column`` of row ``ident`` of ``table`` in the store itself."""
        engine = sqlalchemy.create_engine(self.url)
        with engine.begin() as connection:
            connection.execute(sqlalchemy.text(
                f"UPDATE {table} SET {column} = :value WHERE {key} = :id"),
                {"value": value, "id": ident})
        engine.dispose()

    def age(self, table: str, key: str, ident: str, column: str, age_ms: int) -> None:
        """Pretend row ``ident`` of ``table`` was deleted ``age_ms`` ago."""
        self.update(table, key, ident, column, int(time.time() * 1000) - age_ms)


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def store(request, stack_root):
    root = stack_root / f"gc-{request.param}"
    if request.param == "sqlite":
        server = TrackingServer(root).start()
        yield Store(server, f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts"), None)
    else:
        postgres, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3_server")
        url = postgres.create_database("gc")
        destination = s3.create_bucket("gc-artifacts") + "/store"
        server = TrackingServer(root, env={"MLFLOW_BACKEND_STORE_URI": url,
                                           "MLFLOW_ARTIFACTS_DESTINATION": destination,
                                           **s3.client_env()}).start()
        yield Store(server, url, destination, s3)
    server.stop()


def _artifact(experiment_id: str, run_id: str, name: str) -> str:
    return f"{experiment_id}/{run_id}/artifacts/files/{name}.txt"


def _model_artifact(experiment_id: str, model_id: str, name: str) -> str:
    return f"{experiment_id}/models/{model_id}/artifacts/{name}.txt"


def log_model_with_artifact(client, experiment_id: str, tmp: Path, name: str) -> str:
    """An MLflow 3 logged model with one artifact file; its id."""
    model_id = client.create_logged_model(experiment_id, name=name).model_id
    artifact = tmp / f"{name}.txt"
    artifact.write_text(f"model file of {name}\n")
    client.log_model_artifact(model_id, str(artifact))
    return model_id


def test_gc_purges_only_what_is_older_than_the_ttl(store: Store, tmp_path: Path) -> None:
    with tracking(store.server.url) as client:
        kept = client.create_experiment("gc-kept")
        runs = {name: log_run_with_artifact(client, kept, tmp_path, name)
                for name in ("old", "young", "live")}
        models = {name: log_model_with_artifact(client, kept, tmp_path, name)
                  for name in ("model-old", "model-young", "model-live")}
        gone = client.create_experiment("gc-gone")
        for name in ("in-gone", "in-gone-active"):
            runs[name] = log_run_with_artifact(client, gone, tmp_path, name)
        recent = client.create_experiment("gc-recent")
        runs["in-recent"] = log_run_with_artifact(client, recent, tmp_path, "in-recent")
        for name in ("old", "young"):
            client.delete_run(runs[name])
            client.delete_logged_model(models[f"model-{name}"])
        client.delete_experiment(gone)
        client.delete_experiment(recent)
    store.age("runs", "run_uuid", runs["old"], "deleted_time", DAY_MS + MINUTE_MS)
    store.age("runs", "run_uuid", runs["young"], "deleted_time", DAY_MS - MINUTE_MS)
    store.age("experiments", "experiment_id", gone, "last_update_time", DAY_MS + MINUTE_MS)
    store.age("logged_models", "model_id", models["model-old"], "last_updated_timestamp_ms",
              DAY_MS + MINUTE_MS)
    store.age("logged_models", "model_id", models["model-young"], "last_updated_timestamp_ms",
              DAY_MS - MINUTE_MS)
    # left active in a deleted experiment (restored by hand, or by an older MLflow): it goes too
    store.update("runs", "run_uuid", runs["in-gone-active"], "lifecycle_stage", "active")
    experiment_of = {"old": kept, "young": kept, "live": kept, "in-gone": gone,
                     "in-gone-active": gone, "in-recent": recent}
    every_artifact = ({_artifact(experiment_of[n], r, n) for n, r in runs.items()}
                      | {_model_artifact(kept, m, n) for n, m in models.items()})
    assert every_artifact <= stored_artifacts(store.destination, store.s3)

    dry = run_cli("server", "gc", "--dry-run", env=store.env())
    assert dry.returncode == 0, dry.stderr
    would = {line.split()[3] for line in dry.stdout.splitlines()
             if line.startswith("would purge ")}
    assert would == {runs["old"], runs["in-gone"], runs["in-gone-active"], gone,
                     models["model-old"]}
    assert "would purge 5 item(s)" in dry.stdout
    assert every_artifact <= stored_artifacts(store.destination, store.s3)
    with tracking(store.server.url) as client:
        assert client.get_run(runs["old"]).info.lifecycle_stage == "deleted"
        with pytest.raises(MlflowException, match="already exists"):
            client.create_experiment("gc-gone")

    purge = run_cli("server", "gc", env=store.env())
    assert purge.returncode == 0, purge.stderr
    assert "purged 5 item(s)" in purge.stdout
    left = stored_artifacts(store.destination, store.s3)
    assert _model_artifact(kept, models["model-old"], "model-old") not in left
    for name in ("model-young", "model-live"):
        assert _model_artifact(kept, models[name], name) in left
    for name in ("old", "in-gone", "in-gone-active"):
        assert _artifact(experiment_of[name], runs[name], name) not in left
    for name in ("young", "live", "in-recent"):
        assert _artifact(experiment_of[name], runs[name], name) in left
    with tracking(store.server.url) as client:
        for name in ("old", "in-gone", "in-gone-active"):
            with pytest.raises(MlflowException, match=r"not found|does not exist|No Run"):
                client.get_run(runs[name])
        assert client.get_run(runs["young"]).info.lifecycle_stage == "deleted"
        assert client.get_run(runs["live"]).info.lifecycle_stage == "active"
        with pytest.raises(MlflowException, match=r"not found|does not exist"):
            client.get_logged_model(models["model-old"])
        assert client.get_logged_model(models["model-live"]).name == "model-live"
        reborn = client.get_experiment(client.create_experiment("gc-gone"))
        assert (reborn.name, reborn.lifecycle_stage) == ("gc-gone", "active")

    again = run_cli("server", "gc", env=store.env())
    assert "purged 0 item(s)" in again.stdout


def test_gc_every_runs_until_sigterm(stack_root, tmp_path: Path) -> None:
    root = stack_root / "gc-every"
    store, artifacts = f"sqlite:///{root / 'mlflow.db'}", str(root / "artifacts")
    create_store(store, artifacts)
    env = clean_env(MLFLOW_BACKEND_STORE_URI=store, MLFLOW_ARTIFACTS_DESTINATION=artifacts)
    log = tmp_path / "gc.log"
    service = start([sys.executable, "-m", "mlflow_steps", "server", "gc", "--every", "1s"],
                    log, env=env)
    try:
        wait_until(lambda: log.read_text().count("gc: purged") >= 2, 60, "two gc passes")
        service.process.send_signal(signal.SIGTERM)
        assert service.process.wait(timeout=30) == 0
    finally:
        service.stop()
    assert log.read_text().rstrip().endswith("gc: stopped")


def test_gc_deletes_no_directory_but_the_experiments_own(store: Store, tmp_path: Path) -> None:
    """Clients choose experiments' artifact locations: one pointed at another experiment's
    directory, at the whole destination or out of it is purged without taking that along."""
    sentinel = Path(store.destination).parent / "outside" if not store.s3 else None
    if sentinel:
        sentinel.mkdir(parents=True, exist_ok=True)
        (sentinel / "keep.txt").write_text("not gc's\n")
    with tracking(store.server.url) as client:
        victim = client.create_experiment("gc-victim")
        victim_run = log_run_with_artifact(client, victim, tmp_path, "victim")
        locations = [f"mlflow-artifacts:/{victim}", "mlflow-artifacts:/", "mlflow-artifacts:",
                     f"mlflow-artifacts:/x/../{victim}", "mlflow-artifacts:/../outside",
                     "mlflow-artifacts:/%2e%2e/outside"]
        impostors = {client.create_experiment(f"gc-impostor-{i}"): location
                     for i, location in enumerate(locations)}
        for experiment_id in impostors:
            client.delete_experiment(experiment_id)
    for experiment_id, location in impostors.items():
        store.update("experiments", "experiment_id", experiment_id, "artifact_location",
                     location)
        store.age("experiments", "experiment_id", experiment_id, "last_update_time",
                  DAY_MS + MINUTE_MS)

    dry = run_cli("server", "gc", "--dry-run", env=store.env())
    purge = run_cli("server", "gc", env=store.env())
    assert dry.returncode == 0 and purge.returncode == 0, dry.stderr + purge.stderr
    for output, verb in ((dry.stdout, "would purge"), (purge.stdout, "purged")):
        for experiment_id in impostors:
            (line,) = [line for line in output.splitlines()
                       if line.startswith(f"{verb} experiment {experiment_id} ")]
            assert "(artifacts kept: " in line, line
    assert _artifact(victim, victim_run, "victim") in stored_artifacts(store.destination,
                                                                        store.s3)
    if sentinel:
        assert (sentinel / "keep.txt").read_text() == "not gc's\n"
    with tracking(store.server.url) as client:
        assert client.get_run(victim_run).info.lifecycle_stage == "active"
        assert {e.experiment_id for e in client.search_experiments(view_type=3)}.isdisjoint(
            impostors)
