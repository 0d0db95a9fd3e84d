"""`server serve` for real: sqlite + local artifacts, PostgreSQL + S3 artifacts behind a token.

Clients hold no storage credentials (artifacts are proxied); a registered model version with
tags, description and alias is served by `mlflow models serve -m models:/NAME@ALIAS`.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest
import requests
from devservices import TrackingServer
from devstack import free_port, start, wait_until
from support.server_testing import clean_env, log_run_with_artifact, stored_artifacts, tracking

TOKEN = "serve-test-token-0123456789"


@pytest.fixture(scope="module", params=["sqlite", "postgres"])
def served(request, stack_root):
    """(server, token, artifact destination, s3) for each store kind."""
    root = stack_root / f"serve-{request.param}"
    if request.param == "sqlite":
        server = TrackingServer(root).start()
        yield server, None, str(root / "artifacts"), None
    else:
        postgres, s3 = request.getfixturevalue("postgres"), request.getfixturevalue("s3_server")
        destination = s3.create_bucket("serve-artifacts") + "/mlflow"
        store = postgres.create_database("serve").replace("+psycopg2", "")
        server = TrackingServer(root, env={
            "MLFLOW_BACKEND_STORE_URI": store, "MLFLOW_ARTIFACTS_DESTINATION": destination,
            "MLFLOW_TRACKING_TOKEN": TOKEN, **s3.client_env()}).start()
        yield server, TOKEN, destination, s3
    server.stop()


def test_runs_and_artifacts_are_proxied(served, tmp_path: Path) -> None:
    server, token, destination, s3 = served
    with tracking(server.url, token) as client:
        experiment_id = client.create_experiment("proxied")
        run_ids = [log_run_with_artifact(client, experiment_id, tmp_path, f"run-{i}")
                   for i in range(3)]
        run = client.get_run(run_ids[0])
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")
        assert run.data.params == {"name": "run-0"}
        downloaded = client.download_artifacts(run_ids[1], "files", str(tmp_path / "dl"))
        assert (Path(downloaded) / "run-1.txt").read_text() == "artifact of run-1\n"
    stored = stored_artifacts(destination, s3)
    for i, run_id in enumerate(run_ids):
        assert f"{experiment_id}/{run_id}/artifacts/files/run-{i}.txt" in stored


def test_registered_model_alias_is_served(served, tmp_path: Path) -> None:
    import mlflow
    from sklearn.linear_model import LinearRegression

    server, token, _, _ = served
    name = "proxied-regressor"
    with tracking(server.url, token) as client:
        mlflow.set_experiment("models")
        with mlflow.start_run() as run:
            model = LinearRegression().fit([[0.0], [1.0], [2.0]], [1.0, 3.0, 5.0])
            info = mlflow.sklearn.log_model(model, name="model")
        client.create_registered_model(name, tags={"team": "ml"}, description="y = 2x + 1")
        version = client.create_model_version(
            name, info.model_uri, run_id=run.info.run_id, tags={"stage": "candidate"},
            description="first fit", model_id=info.model_id)
        client.set_registered_model_alias(name, "champion", version.version)
        by_alias = client.get_model_version_by_alias(name, "champion")
        registered = client.get_registered_model(name)
    assert (by_alias.version, by_alias.tags, by_alias.description) == (
        version.version, {"stage": "candidate"}, "first fit")
    assert (registered.tags, registered.description) == ({"team": "ml"}, "y = 2x + 1")

    port = free_port()
    client_env = clean_env(MLFLOW_TRACKING_URI=server.url,
                           PATH=f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                           **({"MLFLOW_TRACKING_TOKEN": token} if token else {}))
    scorer = start([sys.executable, "-m", "mlflow", "models", "serve", "-m",
                    f"models:/{name}@champion", "--env-manager", "local", "-h", "127.0.0.1",
                    "-p", str(port)], tmp_path / "models-serve.log", env=client_env)
    try:
        wait_until(lambda: scorer.process.poll() is not None or requests.get(
            f"http://127.0.0.1:{port}/ping", timeout=2).ok, 120, "mlflow models serve")
        assert scorer.process.poll() is None, scorer.log.read_text()
        answer = requests.post(f"http://127.0.0.1:{port}/invocations",
                               json={"inputs": [[3.0], [10.0]]}, timeout=30)
    finally:
        scorer.stop()
    assert answer.status_code == 200, answer.text
    assert [round(p, 6) for p in answer.json()["predictions"]] == [7.0, 21.0]


def test_store_password_never_logged(served) -> None:
    server, token, _, _ = served
    log = server.service.log.read_text()
    assert "serving on 127.0.0.1" in log
    store = server.env.get("MLFLOW_BACKEND_STORE_URI", "")
    password = store.partition("://")[2].partition("@")[0].partition(":")[2]
    if password:
        assert password not in log and ":***@" in log
    if token:
        assert token not in log


def test_sigterm_shuts_down_gracefully(stack_root) -> None:
    server = TrackingServer(stack_root / "serve-sigterm").start()
    server.service.process.send_signal(signal.SIGTERM)
    # uvicorn re-raises the signal once it has shut down cleanly
    assert server.service.process.wait(timeout=60) in (0, -signal.SIGTERM)
    log = server.service.log.read_text()
    assert "Shutting down" in log and "Finished server process" in log
