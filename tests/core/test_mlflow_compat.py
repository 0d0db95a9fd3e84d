"""Contract test: each adapter in mlflow_steps.core.mlflow_compat against the installed MLflow.

Everything here runs the real MLflow functions on real stores (sqlite, local artifacts, an
HTTP server); a new MLflow release that moves or changes one of them fails here, by name.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import mlflow
import pytest
import requests
from packaging.specifiers import SpecifierSet
from packaging.version import Version
from support.helpers import EXAMPLE

from mlflow_steps.core import mlflow_compat as compat

REPO = Path(__file__).resolve().parents[2]


def test_installed_mlflow_is_in_the_declared_range() -> None:
    assert Version(mlflow.__version__) in SpecifierSet(compat.SUPPORTED)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert f'"mlflow-skinny{compat.SUPPORTED}"' in pyproject
    assert f'"mlflow{compat.SERVER_SUPPORTED}"' in pyproject


# --- projects -------------------------------------------------------------------------------

@pytest.fixture
def sqlite_tracking(tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    mlflow.set_tracking_uri(uri)
    yield uri
    mlflow.set_tracking_uri(None)


def test_project_spec_and_command(tmp_path: Path) -> None:
    spec = compat.load_project_spec(str(EXAMPLE))
    assert spec.get_entry_point("main") is not None
    command = compat.entry_point_command(spec, "main", {"C": "0.5", "max_iter": "7"},
                                         str(tmp_path))
    assert command.startswith("python ") and "0.5" in command and "7" in command
    quoted = compat.entry_point_command(spec, "main", {"C": "1; touch x", "max_iter": "1"},
                                        str(tmp_path))
    assert "'1; touch x'" in quoted  # parameters are shell-quoted


def test_project_run_and_environment(sqlite_tracking: str) -> None:
    client = mlflow.MlflowClient(sqlite_tracking)
    experiment_id = client.create_experiment("compat", artifact_location=(
        Path(sqlite_tracking.removeprefix("sqlite:///")).parent / "a").as_uri())
    run = compat.create_project_run(str(EXAMPLE), experiment_id, str(EXAMPLE), "main",
                                    {"C": "0.5"})
    stored = client.get_run(run.info.run_id)
    assert stored.info.experiment_id == experiment_id
    assert stored.data.params["C"] == "0.5"
    assert stored.data.tags["mlflow.project.entryPoint"] == "main"
    env = compat.project_run_environment(run.info.run_id, experiment_id)
    assert env["MLFLOW_RUN_ID"] == run.info.run_id
    assert env["MLFLOW_EXPERIMENT_ID"] == experiment_id
    assert env["MLFLOW_TRACKING_URI"] == sqlite_tracking


def test_run_context_tags_a_model_logged_outside_a_run(tmp_path: Path) -> None:
    """What the runtime relies on to find such a model: MLflow puts MLFLOW_RUN_CONTEXT's
    tags on it, and does not link it to the run named by MLFLOW_RUN_ID."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    experiment_id = client.create_experiment("context",
                                             artifact_location=(tmp_path / "a").as_uri())
    run_id = client.create_run(experiment_id).info.run_id
    script = ("import mlflow, mlflow.sklearn\n"
              "from sklearn.dummy import DummyClassifier\n"
              "mlflow.sklearn.log_model(DummyClassifier().fit([[0], [1]], [0, 1]), "
              "name='model', pip_requirements=[])\n")  # (no requirement inference: seconds)
    env = {**os.environ, "MLFLOW_TRACKING_URI": uri, "MLFLOW_EXPERIMENT_ID": experiment_id,
           "MLFLOW_RUN_ID": run_id,
           compat.RUN_CONTEXT_VARIABLE: json.dumps({"probe": run_id})}
    subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=300,
                   capture_output=True, cwd=tmp_path)
    [model] = client.search_logged_models(experiment_ids=[experiment_id],
                                          filter_string=f"tags.`probe` = '{run_id}'")
    assert model.name == "model" and model.source_run_id in (None, "")


# --- the REST layer -------------------------------------------------------------------------

class Recorder:
    """Answers every request with ``status`` (and Retry-After), recording the headers."""

    def __init__(self, status: int) -> None:
        self.requests: list[dict[str, str]] = []
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("Content-Length") or 0))
                recorder.requests.append(dict(self.headers))
                body = b'{"experiments": []}'
                self.send_response(status)
                self.send_header("Retry-After", "5")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"


def test_tracking_request_uses_mlflow_credentials_without_retrying(monkeypatch) -> None:
    monkeypatch.setenv("MLFLOW_TRACKING_TOKEN", "compat-token")
    server = Recorder(429)
    try:
        started = time.monotonic()
        response = compat.tracking_request(server.url, "/api/2.0/mlflow/experiments/search",
                                           "POST", timeout=5, json={"max_results": 1})
        assert time.monotonic() - started < 4  # neither retried nor slept for Retry-After
    finally:
        server.httpd.shutdown()
    assert response.status_code == 429 and response.headers["Retry-After"] == "5"
    assert len(server.requests) == 1
    assert server.requests[0]["Authorization"] == "Bearer compat-token"
    assert compat.tracking_host_creds(server.url).token == "compat-token"


def test_tracking_request_timeout() -> None:
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(1)
        started = time.monotonic()
        with pytest.raises(mlflow.exceptions.MlflowException) as info:
            compat.tracking_request(f"http://127.0.0.1:{silent.getsockname()[1]}",
                                    "/api/2.0/mlflow/experiments/search", "POST", timeout=1)
        assert time.monotonic() - started < 5
    cause = info.value.__cause__ or info.value.__context__
    assert isinstance(cause, requests.Timeout | requests.ConnectionError)
    assert "timed out" in str(info.value).lower()


# --- the SQL store --------------------------------------------------------------------------

@pytest.fixture
def store(tmp_path: Path):
    import sqlalchemy  # noqa: F401 - declared by the server extra
    artifacts = tmp_path / "artifacts"
    return compat.sql_tracking_store(f"sqlite:///{tmp_path / 'store.db'}", artifacts.as_uri())


def test_deleted_runs_and_hard_delete(store) -> None:
    experiment_id = store.create_experiment("gc")
    run = store.create_run(experiment_id, "user", 0, [], "r")
    store.delete_run(run.info.run_id)
    assert run.info.run_id in compat.deleted_run_ids(store, 0)
    assert compat.deleted_run_ids(store, 10**12) == []  # none deleted that long ago
    compat.hard_delete_run(store, run.info.run_id)
    assert compat.deleted_run_ids(store, 0) == []
    store.delete_experiment(experiment_id)
    compat.hard_delete_experiment(store, experiment_id)
    with pytest.raises(mlflow.exceptions.MlflowException):
        store.get_experiment(experiment_id)


def test_deleted_logged_models_and_hard_delete(store) -> None:
    experiment_id = store.create_experiment("gc-models")
    model = store.create_logged_model(experiment_id, name="m")
    store.delete_logged_model(model.model_id)
    if not hasattr(store, "_get_deleted_logged_models"):
        assert compat.deleted_logged_model_ids(store, 0) == []  # this MLflow keeps them
        return
    assert compat.deleted_logged_model_ids(store, 0) == [model.model_id]
    assert compat.deleted_logged_model(store, model.model_id).name == "m"
    compat.hard_delete_logged_model(store, model.model_id)
    assert compat.deleted_logged_model_ids(store, 0) == []


def test_artifact_repository(tmp_path: Path) -> None:
    (tmp_path / "file.txt").write_text("x")
    repository = compat.artifact_repository((tmp_path / "repo").as_uri())
    repository.log_artifact(str(tmp_path / "file.txt"), "sub")
    assert [f.path for f in repository.list_artifacts("sub")] == ["sub/file.txt"]
    repository.delete_artifacts()
    assert not (tmp_path / "repo" / "sub" / "file.txt").exists()


def test_schema_revisions_and_upgrade(tmp_path: Path) -> None:
    """(Upgrading a store written by an older MLflow: tests/server/test_server_db_upgrade.py.)"""
    import sqlalchemy
    from alembic.script import ScriptDirectory

    database = tmp_path / "fresh.db"
    engine = sqlalchemy.create_engine(f"sqlite:///{database}")
    try:
        assert compat.schema_revision(engine) is None
        head = compat.head_schema_revision()
        script = ScriptDirectory.from_config(compat.alembic_config(""))
        assert script.get_current_head() == head
        compat.sql_tracking_store(f"sqlite:///{database}", (tmp_path / "a").as_uri())
        assert compat.schema_revision(engine) == head
        compat.upgrade_schema(engine)  # at head: nothing to do, nothing broken
        assert compat.schema_revision(engine) == head
    finally:
        engine.dispose()


# --- the tracking server --------------------------------------------------------------------

@pytest.mark.server_mlflow
def test_allowed_hosts(monkeypatch) -> None:
    monkeypatch.delenv("MLFLOW_SERVER_ALLOWED_HOSTS", raising=False)
    assert compat.allowed_hosts_from_env() is None
    defaults = compat.default_allowed_hosts()
    assert "localhost" in defaults and "127.0.0.1" in defaults
    monkeypatch.setenv("MLFLOW_SERVER_ALLOWED_HOSTS", "mlflow.example, mlflow.example:*")
    assert compat.allowed_hosts_from_env() == ["mlflow.example", "mlflow.example:*"]


def healthy(url: str) -> bool:
    try:
        return requests.get(f"{url}/health", timeout=2).status_code == 200
    except requests.ConnectionError:
        return False


def test_store_initialisation_leaves_the_client_uris_alone(tmp_path: Path, monkeypatch) -> None:
    """MLflow's initialiser re-points the process's tracking and registry URIs; the adapter
    puts them back, and a second store in one process is really initialised (not cached)."""
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    mlflow.set_registry_uri(None)
    mlflow.set_tracking_uri(None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for name in ("first", "second"):
        store_uri = f"sqlite:///{tmp_path / name}.db"
        compat.initialize_backend_stores(store_uri, store_uri, "mlflow-artifacts:/")
        assert mlflow.get_tracking_uri() == mlflow.get_registry_uri() == "http://127.0.0.1:9"
        assert "MLFLOW_REGISTRY_URI" not in os.environ
        import sqlalchemy
        engine = sqlalchemy.create_engine(store_uri)
        try:
            assert compat.schema_revision(engine) == compat.head_schema_revision()
        finally:
            engine.dispose()


@pytest.mark.server_mlflow
def test_server_settings_app_and_store_initialisation(tmp_path: Path) -> None:
    """The settings reach MLflow's app: it serves the store and proxies artifacts."""
    import uvicorn  # noqa: F401 - declared by the server extra
    store_uri = f"sqlite:///{tmp_path / 'server.db'}"
    destination = tmp_path / "destination"
    compat.initialize_backend_stores(store_uri, store_uri, "mlflow-artifacts:/")
    import sqlalchemy
    engine = sqlalchemy.create_engine(store_uri)
    try:
        assert compat.schema_revision(engine) == compat.head_schema_revision()
    finally:
        engine.dispose()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = compat.server_environment(
        backend_store_uri=store_uri, registry_store_uri=store_uri,
        default_artifact_root="mlflow-artifacts:/", serve_artifacts=True,
        artifacts_destination=str(destination))
    script = ("import uvicorn\nfrom mlflow_steps.core.mlflow_compat import server_asgi_app\n"
              f"uvicorn.run(server_asgi_app(), host='127.0.0.1', port={port}, "
              "log_level='warning')\n")
    server = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, env={
                                  **os.environ, **settings,
                                  "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while not healthy(url):
            assert server.poll() is None, "the app exited"
            assert time.monotonic() < deadline, "the app did not start"
            time.sleep(0.5)
        client = mlflow.MlflowClient(url, url)
        experiment_id = client.create_experiment("served")
        run_id = client.create_run(experiment_id).info.run_id
        (tmp_path / "a.txt").write_text("artifact")
        client.log_artifact(run_id, str(tmp_path / "a.txt"))
    finally:
        server.terminate()
        server.wait(30)
    assert mlflow.MlflowClient(store_uri).get_experiment(experiment_id).name == "served"
    assert [p.read_text() for p in destination.rglob("a.txt")] == ["artifact"]
