"""Maintenance commands (`gc`, `db-upgrade`) refuse a store that is not there, and create
nothing: one line naming the store (password redacted), exit 2. Only `serve` creates one;
`check` (which judges what `serve` would do) passes, noting that `serve` will create it.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import sqlalchemy
from support.helpers import run_cli
from support.server_testing import clean_env, create_store

from mlflow_steps.server import store
from mlflow_steps.server.config import ServerConfig

MAINTENANCE = [("gc",), ("gc", "--dry-run"), ("db-upgrade",), ("db-upgrade", "--dry-run"),
               ("gc", "--every", "1s")]


def tree(root: Path) -> list[str]:
    """Every path under ``root``, relative, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def one_line(result) -> str:
    assert result.returncode == 2, result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    assert lines[0].startswith("mlflow-steps: error: MLFLOW_BACKEND_STORE_URI / "
                               "--backend-store-uri: "), lines[0]
    return lines[0]


@pytest.fixture
def served_before(tmp_path: Path) -> dict[str, str]:
    """A store and artifact directory as `serve` leaves them; the env naming them."""
    store_uri = f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"
    artifacts = str(tmp_path / "artifacts")
    create_store(store_uri, artifacts)
    return clean_env(MLFLOW_BACKEND_STORE_URI=store_uri, MLFLOW_ARTIFACTS_DESTINATION=artifacts,
                     MLFLOW_SERVER_BACKUP_DIR=str(tmp_path / "backups"))


@pytest.mark.parametrize("args", MAINTENANCE, ids=" ".join)
@pytest.mark.parametrize("typo", ["stroe/mlflow.db", "store/mlfow.db"])
def test_mistyped_sqlite_path_is_refused_and_nothing_created(served_before, tmp_path: Path,
                                                             args, typo: str) -> None:
    before = tree(tmp_path)
    wrong = tmp_path / typo
    result = run_cli("server", *args, env={**served_before,
                                           "MLFLOW_BACKEND_STORE_URI": f"sqlite:///{wrong}"})
    line = one_line(result)
    assert f"sqlite:///{wrong} does not exist" in line and "only `mlflow-steps server serve` " \
        "creates a store" in line
    assert "purged" not in result.stdout
    assert tree(tmp_path) == before


@pytest.mark.parametrize("args", MAINTENANCE, ids=" ".join)
def test_default_store_is_not_created_by_maintenance(tmp_path: Path, args) -> None:
    """The default (relative) store, e.g. a container started without its volume."""
    result = run_cli("server", *args, env=clean_env(), cwd=tmp_path)  # relative paths: here
    assert "mlflow/standalone/store/mydb.sqlite does not exist" in one_line(result)
    assert tree(tmp_path) == []



@pytest.mark.parametrize("args", MAINTENANCE, ids=" ".join)
def test_not_a_file(tmp_path: Path, args) -> None:
    """A directory, or a device: never opened as a database (gc used to create tables)."""
    for path in (tmp_path, Path("/dev/null")):
        result = run_cli("server", *args,
                         env=clean_env(MLFLOW_BACKEND_STORE_URI=f"sqlite:///{path}"))
        assert f"sqlite:///{path} is not a database file" in one_line(result)
    assert tree(tmp_path) == []


def test_gc_refuses_an_empty_database_and_creates_no_tables(tmp_path: Path) -> None:
    """An existing database that is no tracking store (a mistyped name): gc used to create
    the MLflow schema in it."""
    database = tmp_path / "empty.sqlite"
    sqlalchemy.create_engine(f"sqlite:///{database}").connect().close()
    uri = f"sqlite:///{database}"
    for args in (("gc",), ("gc", "--dry-run")):
        result = run_cli("server", *args, env=clean_env(MLFLOW_BACKEND_STORE_URI=uri))
        assert f"{uri} has no MLflow schema: not a tracking store" in one_line(result)
    with store.engine(ServerConfig(backend_store_uri=uri)) as engine:
        assert store.table_names(engine) == []


@pytest.mark.parametrize("args", MAINTENANCE, ids=" ".join)
def test_missing_postgres_database_is_one_redacted_line(postgres, args) -> None:
    uri = postgres.url("no_such_database")
    line = one_line(run_cli("server", *args, env=clean_env(MLFLOW_BACKEND_STORE_URI=uri)))
    assert "no_such_database" in line and "does not exist" in line
    assert postgres.password not in line


def test_gc_on_empty_postgres_database_is_refused(postgres) -> None:
    uri = postgres.create_database("gc_not_a_store")
    for args in (("gc",), ("gc", "--dry-run")):
        line = one_line(run_cli("server", *args, env=clean_env(MLFLOW_BACKEND_STORE_URI=uri)))
        assert "has no MLflow schema" in line and postgres.password not in line
    with store.engine(ServerConfig(backend_store_uri=uri)) as engine:
        assert store.table_names(engine) == []


@pytest.mark.parametrize("dry_run", [(), ("--dry-run",)], ids=["gc", "gc --dry-run"])
def test_gc_refuses_a_missing_artifact_directory(served_before, tmp_path: Path,
                                                 dry_run) -> None:
    """Purging rows with a mistyped artifact path would orphan every purged run's files."""
    before = tree(tmp_path)
    wrong = tmp_path / "artefacts"
    result = run_cli("server", "gc", *dry_run,
                     env={**served_before, "MLFLOW_ARTIFACTS_DESTINATION": str(wrong)})
    assert result.returncode == 2
    (line,) = result.stderr.strip().splitlines()
    assert line.startswith("mlflow-steps: error: MLFLOW_ARTIFACTS_DESTINATION / "
                           "--artifacts-destination: ") and f"{wrong} does not exist" in line
    assert tree(tmp_path) == before


def test_maintenance_works_on_the_store_serve_created(served_before) -> None:
    gc = run_cli("server", "gc", "--dry-run", env=served_before)
    assert gc.returncode == 0 and "would purge 0 item(s)" in gc.stdout, gc.stderr
    upgrade = run_cli("server", "db-upgrade", "--dry-run", env=served_before)
    assert upgrade.returncode == 0 and "is already at" in upgrade.stdout, upgrade.stderr


def test_check_notes_that_serve_will_create_the_store(tmp_path: Path) -> None:
    database = tmp_path / "new" / "mlflow.db"
    result = run_cli("server", "check", "--host", "127.0.0.1", env=clean_env(
        MLFLOW_BACKEND_STORE_URI=f"sqlite:///{database}",
        MLFLOW_ARTIFACTS_DESTINATION=str(tmp_path / "artifacts")))
    assert result.returncode == 0, result.stderr
    assert f"note: sqlite:///{database} does not exist yet; `serve` creates it" in result.stdout
    assert os.listdir(tmp_path) == []


# Variables under which MLflow turns its telemetry off by itself (pytest sets the first).
CI_VARIABLES = ("PYTEST_CURRENT_TEST", "GITHUB_ACTIONS", "CI", "GITLAB_CI", "JENKINS_URL",
                "BUILDKITE", "TF_BUILD", "TRAVIS", "CIRCLECI")


@pytest.mark.parametrize("args", [("gc", "--dry-run"), ("db-upgrade",), ("check",)],
                         ids=" ".join)
def test_maintenance_leaves_nothing_in_home(tmp_path: Path, args) -> None:
    """In the image HOME is the /data volume: MLflow's telemetry id must not land there."""
    home = tmp_path / "home"
    home.mkdir()
    env = {key: value for key, value in clean_env(HOME=str(home)).items()
           if key not in CI_VARIABLES and key != "XDG_CONFIG_HOME"}
    env["MLFLOW_BACKEND_STORE_URI"] = f"sqlite:///{tmp_path / 'missing' / 'mlflow.db'}"
    # a process of its own: MLflow reads its telemetry switch when it is imported
    run_cli("server", *args, env=env, cwd=tmp_path, process=True)
    assert tree(home) == []
