"""The tracking-server image on a real Docker engine, talked to from the host.

Every test owns what it needs: ``container`` is a fresh server container on a fresh volume
of its own (removed afterwards), and one-off containers get fresh volume names, so the file
passes in any order and any test can run alone. Only the image build is shared.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests
from devstack import free_port, wait_until
from support.server_testing import OLD_REVISION, log_run_with_artifact, tracking, write_old_store

from images import build

TOKEN = "image-test-token-0a1b2c3d4e5f"
STORE = "/data/mlflow/standalone/store/mydb.sqlite"


@dataclass(frozen=True)
class Container:
    id: str
    url: str
    volume: str


def fresh_volume(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(4)}"


def data_files(docker_engine, image: str, volume: str) -> list[str]:
    """Every path in ``volume`` (as /data/...), listed by a throwaway container."""
    listing = docker_engine.cli("run", "--rm", "-v", f"{volume}:/data", "--entrypoint", "find",
                                image, "/data", "-mindepth", "1")
    return sorted(listing.stdout.split())


@pytest.fixture(scope="module")
def server_image(docker_engine, registry) -> str:
    return build(docker_engine, registry, "tracking-server", "test")


@pytest.fixture
def container(docker_engine, server_image: str) -> Iterator[Container]:
    """A fresh container serving with a token on a fresh volume, both removed afterwards."""
    port = free_port()
    volume = fresh_volume("mls-ts")
    container_id = None
    try:
        container_id = docker_engine.cli(
            "run", "-d", "--read-only", "--tmpfs", "/tmp", "-v", f"{volume}:/data",
            "-p", f"127.0.0.1:{port}:5000", "-e", f"MLFLOW_TRACKING_TOKEN={TOKEN}",
            "-e", "MLFLOW_WORKERS=1", "--health-interval", "1s", "--health-start-period", "0s",
            server_image).stdout.strip()
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: requests.get(f"{url}/health", timeout=2).ok, 120,
                   "server in container")
        yield Container(container_id, url, volume)
    finally:
        if container_id:
            docker_engine.cli("rm", "-f", container_id, check=False)
        docker_engine.cli("volume", "rm", "-f", volume, check=False)


def test_host_clients_use_the_container(docker_engine, container: Container,
                                        tmp_path: Path) -> None:
    assert requests.get(f"{container.url}/api/2.0/mlflow/experiments/search?max_results=1",
                        timeout=10).status_code == 401
    with tracking(container.url, TOKEN) as client:
        experiment_id = client.create_experiment("from-host")
        run_id = log_run_with_artifact(client, experiment_id, tmp_path, "hosted")
        fetched = client.download_artifacts(run_id, "files/hosted.txt", str(tmp_path / "dl"))
        assert Path(fetched).read_text() == "artifact of hosted\n"
    stored = docker_engine.cli("exec", container.id, "find", "/data/mlflow/standalone",
                               "-type", "f").stdout.split()
    assert STORE in stored
    assert any(path.endswith(f"{run_id}/artifacts/files/hosted.txt") for path in stored)


def test_admin_commands_in_the_container(docker_engine, container: Container) -> None:
    check = docker_engine.cli("exec", container.id, "mlflow-steps", "server", "check")
    assert check.returncode == 0
    assert "server check: allowed Host headers (MLflow's default; " in check.stdout
    gc = docker_engine.cli("exec", container.id, "mlflow-steps", "server", "gc", "--dry-run")
    assert "would purge 0 item(s)" in gc.stdout
    bad = docker_engine.cli("exec", "-e", "MLFLOW_TRACKING_GC_TTL=monthly", container.id,
                            "mlflow-steps", "server", "check", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "mlflow-steps: check: MLFLOW_TRACKING_GC_TTL / --gc-ttl: 'monthly' is not a duration "
        "like 30d0h0m0s (#d#h#m#s)"]
    unwritable = docker_engine.cli(
        "exec", "-e", "MLFLOW_ARTIFACTS_DESTINATION=/opt/mlflow-steps/artifacts", container.id,
        "mlflow-steps", "server", "check", check=False)
    assert unwritable.returncode == 2
    assert unwritable.stderr.strip().splitlines() == [
        "mlflow-steps: check: MLFLOW_ARTIFACTS_DESTINATION / --artifacts-destination: "
        "/opt/mlflow-steps is not writable"]


def test_non_root_healthy_and_no_pip_config(docker_engine, container: Container) -> None:
    assert docker_engine.cli("exec", container.id, "id", "-u").stdout.strip() == "10001"
    wait_until(lambda: docker_engine.cli(
        "inspect", "-f", "{{.State.Health.Status}}", container.id).stdout.strip() == "healthy",
        60, "docker health check")
    probe = docker_engine.cli("exec", container.id, "sh", "-c",
                              "ls /etc/pip.conf /run/secrets 2>&1; pip config list", check=False)
    assert "No such file" in probe.stdout and "index-url" not in probe.stdout


def test_docker_stop_is_graceful(docker_engine, container: Container) -> None:
    docker_engine.cli("stop", "-t", "30", container.id)
    state = json.loads(docker_engine.cli("inspect", "-f", "{{json .State}}",
                                         container.id).stdout)
    assert state["ExitCode"] in (0, 128 + 15)  # uvicorn re-raises SIGTERM after shutting down
    logs = docker_engine.cli("logs", container.id)
    assert "Finished server process" in logs.stdout + logs.stderr


def test_one_off_commands_share_the_volume(docker_engine, server_image: str,
                                           container: Container) -> None:
    """What the CronJob and an upgrade do: fresh containers with a command, on the volume of
    a server that created the store (stopped first, as before an upgrade)."""
    docker_engine.cli("stop", "-t", "30", container.id)
    one_off = ("run", "--rm", "--read-only", "--tmpfs", "/tmp", "-v", f"{container.volume}:/data",
               server_image)
    upgrade = docker_engine.cli(*one_off, "db-upgrade", "--dry-run", check=False)
    assert upgrade.returncode == 0, upgrade.stderr
    assert f"db-upgrade: sqlite:///{STORE} is already at" in upgrade.stdout
    gc = docker_engine.cli(*one_off, "gc", check=False)
    assert gc.returncode == 0, gc.stderr
    assert "gc: purged 0 item(s)" in gc.stdout


@pytest.mark.parametrize("command", [("gc",), ("gc", "--dry-run"), ("db-upgrade",),
                                     ("db-upgrade", "--dry-run")], ids=" ".join)
def test_one_off_commands_refuse_a_volume_without_store(docker_engine, server_image: str,
                                                        command) -> None:
    """Before any server ran on the volume (or with the wrong volume) there is no store:
    maintenance says so in one line and leaves the volume (HOME, too) empty."""
    volume = fresh_volume("mls-empty")
    try:
        result = docker_engine.cli("run", "--rm", "--read-only", "--tmpfs", "/tmp",
                                   "-v", f"{volume}:/data", server_image, *command, check=False)
        assert result.returncode == 2, result.stdout + result.stderr
        (line,) = result.stderr.strip().splitlines()
        # gc adds "(and 1 more: ...)": the artifact directory is missing too
        assert line.startswith(
            "mlflow-steps: error: MLFLOW_BACKEND_STORE_URI / --backend-store-uri: "
            f"sqlite:///{STORE} does not exist (a mistyped path? only `mlflow-steps server "
            "serve` creates a store)"), line
        assert data_files(docker_engine, server_image, volume) == []
    finally:
        docker_engine.cli("volume", "rm", "-f", volume, check=False)


@pytest.mark.parametrize(("env", "message"), [
    ((), "MLFLOW_TRACKING_TOKEN / --token: not set, and the server would listen on 0.0.0.0"),
    (("-e", "MLFLOW_TRACKING_TOKEN=CHANGE-ME"),
     "MLFLOW_TRACKING_TOKEN / --token: is a placeholder, not a secret"),
    (("-e", "MLFLOW_TRACKING_TOKEN=short-token"),
     "MLFLOW_TRACKING_TOKEN / --token: is 11 characters, too short to be a secret"),
], ids=["no token", "placeholder", "short"])
def test_serve_refuses_an_open_or_guessable_api(docker_engine, server_image: str, env,
                                                message: str) -> None:
    """The image's default command on 0.0.0.0: no token, or the manifests' placeholder, is
    refused before anything is created."""
    volume = fresh_volume("mls-noauth")
    try:
        result = docker_engine.cli("run", "--rm", "--read-only", "--tmpfs", "/tmp",
                                   "-v", f"{volume}:/data", *env, server_image,
                                   check=False, timeout=120)
        assert result.returncode == 2, result.stdout + result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
        assert lines[0].startswith(f"mlflow-steps: error: {message}"), lines[0]
        assert "CHANGE-ME" not in result.stderr
        # no store, no artifact directory (MLflow's telemetry id may land in /data/.config:
        # HOME is /data, and only the maintenance commands turn telemetry off)
        created = data_files(docker_engine, server_image, volume)
        assert not [path for path in created if path.startswith("/data/mlflow")], created
    finally:
        docker_engine.cli("volume", "rm", "-f", volume, check=False)


def test_db_upgrade_backs_up_postgres_with_the_image_pg_dump(docker_engine, server_image: str,
                                                             old_python, postgres) -> None:
    """The admin's path: a store of an older MLflow, upgraded by the image, dump first."""
    database = f"legacy_image_{secrets.token_hex(4)}"
    uri = postgres.create_database(database)
    write_old_store(old_python, uri.replace("+psycopg2", ""))
    volume = fresh_volume("mls-up")
    try:
        upgrade = docker_engine.cli("run", "--rm", "--network", "host", "-v", f"{volume}:/data",
                                    "-e", f"MLFLOW_BACKEND_STORE_URI={uri}", server_image,
                                    "db-upgrade", check=False)
        assert upgrade.returncode == 0, upgrade.stderr
        assert f"upgraded from {OLD_REVISION} to " in upgrade.stdout
        assert postgres.password not in upgrade.stdout + upgrade.stderr
        listing = docker_engine.cli("run", "--rm", "-v", f"{volume}:/data", "--entrypoint", "sh",
                                    server_image, "-c", "pg_restore --list "
                                    f"/data/mlflow/standalone/backups/{database}.*.dump")
        assert "TABLE public runs" in listing.stdout
    finally:
        docker_engine.cli("volume", "rm", "-f", volume, check=False)
