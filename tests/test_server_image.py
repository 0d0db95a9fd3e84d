"""The tracking-server image on a real Docker engine, talked to from the host."""

from __future__ import annotations

import json
import secrets
from pathlib import Path

import pytest
import requests
from devstack import free_port, wait_until
from server_testing import OLD_REVISION, log_run_with_artifact, tracking, write_old_store

from images import build

TOKEN = "image-test-token-0a1b2c3d4e5f"


@pytest.fixture(scope="module")
def server_image(docker_engine, registry) -> str:
    return build(docker_engine, registry, "tracking-server", "test")


@pytest.fixture(scope="module")
def container(docker_engine, server_image: str):
    """(id, url, volume) of one container serving with a token (every `docker run` copies
    the image on this engine's vfs storage, so the tests share it; a late one stops it)."""
    port = free_port()
    volume = f"mls-ts-{secrets.token_hex(4)}"
    container_id = docker_engine.cli(
        "run", "-d", "--read-only", "--tmpfs", "/tmp", "-v", f"{volume}:/data",
        "-p", f"127.0.0.1:{port}:5000", "-e", f"MLFLOW_TRACKING_TOKEN={TOKEN}",
        "-e", "MLFLOW_WORKERS=1", "--health-interval", "1s", "--health-start-period", "0s",
        server_image).stdout.strip()
    url = f"http://127.0.0.1:{port}"
    wait_until(lambda: requests.get(f"{url}/health", timeout=2).ok, 120, "server in container")
    yield container_id, url, volume
    docker_engine.cli("rm", "-f", container_id, check=False)
    docker_engine.cli("volume", "rm", "-f", volume, check=False)


def test_host_clients_use_the_container(docker_engine, container, tmp_path: Path) -> None:
    container_id, url, _ = container
    assert requests.get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1",
                        timeout=10).status_code == 401
    with tracking(url, TOKEN) as client:
        experiment_id = client.create_experiment("from-host")
        run_id = log_run_with_artifact(client, experiment_id, tmp_path, "hosted")
        fetched = client.download_artifacts(run_id, "files/hosted.txt", str(tmp_path / "dl"))
        assert Path(fetched).read_text() == "artifact of hosted\n"
    stored = docker_engine.cli("exec", container_id, "find", "/data/mlflow/standalone",
                               "-type", "f").stdout.split()
    assert "/data/mlflow/standalone/store/mydb.sqlite" in stored
    assert any(path.endswith(f"{run_id}/artifacts/files/hosted.txt") for path in stored)


def test_admin_commands_in_the_container(docker_engine, container) -> None:
    container_id, _, _ = container
    assert docker_engine.cli("exec", container_id, "mlflow-steps", "server",
                             "check").returncode == 0
    gc = docker_engine.cli("exec", container_id, "mlflow-steps", "server", "gc", "--dry-run")
    assert "would purge 0 item(s)" in gc.stdout
    bad = docker_engine.cli("exec", "-e", "MLFLOW_TRACKING_GC_TTL=monthly", container_id,
                            "mlflow-steps", "server", "check", check=False)
    assert bad.returncode == 2
    assert bad.stderr.strip().splitlines() == [
        "mlflow-steps: check: MLFLOW_TRACKING_GC_TTL / --gc-ttl: 'monthly' is not a duration "
        "like 30d0h0m0s (#d#h#m#s)"]
    unwritable = docker_engine.cli(
        "exec", "-e", "MLFLOW_ARTIFACTS_DESTINATION=/opt/mlflow-steps/artifacts", container_id,
        "mlflow-steps", "server", "check", check=False)
    assert unwritable.returncode == 2
    assert unwritable.stderr.strip().splitlines() == [
        "mlflow-steps: check: MLFLOW_ARTIFACTS_DESTINATION / --artifacts-destination: "
        "/opt/mlflow-steps is not writable"]


def test_non_root_healthy_and_no_pip_config(docker_engine, container) -> None:
    container_id, _, _ = container
    assert docker_engine.cli("exec", container_id, "id", "-u").stdout.strip() == "10001"
    wait_until(lambda: docker_engine.cli(
        "inspect", "-f", "{{.State.Health.Status}}", container_id).stdout.strip() == "healthy",
        60, "docker health check")
    probe = docker_engine.cli("exec", container_id, "sh", "-c",
                              "ls /etc/pip.conf /run/secrets 2>&1; pip config list", check=False)
    assert "No such file" in probe.stdout and "index-url" not in probe.stdout


def test_docker_stop_is_graceful(docker_engine, container) -> None:
    container_id, _, _ = container
    docker_engine.cli("stop", "-t", "30", container_id)
    state = json.loads(docker_engine.cli("inspect", "-f", "{{json .State}}",
                                         container_id).stdout)
    assert state["ExitCode"] in (0, 128 + 15)  # uvicorn re-raises SIGTERM after shutting down
    logs = docker_engine.cli("logs", container_id)
    assert "Finished server process" in logs.stdout + logs.stderr


def test_one_off_commands_share_the_volume(docker_engine, server_image: str, container) -> None:
    """What the CronJob does: a fresh container with a command, on the server's volume."""
    _, _, volume = container
    upgrade = docker_engine.cli("run", "--rm", "--read-only", "-v", f"{volume}:/data",
                                server_image, "db-upgrade", "--dry-run", check=False)
    assert upgrade.returncode == 0, upgrade.stderr
    assert "db-upgrade: sqlite:////data/mlflow/standalone/store/mydb.sqlite is already at" \
        in upgrade.stdout


def test_db_upgrade_backs_up_postgres_with_the_image_pg_dump(docker_engine, server_image: str,
                                                             old_python, postgres) -> None:
    """The admin's path: a store of an older MLflow, upgraded by the image, dump first."""
    uri = postgres.create_database("legacy_image")
    write_old_store(old_python, uri.replace("+psycopg2", ""))
    volume = f"mls-up-{secrets.token_hex(4)}"
    try:
        upgrade = docker_engine.cli("run", "--rm", "--network", "host", "-v", f"{volume}:/data",
                                    "-e", f"MLFLOW_BACKEND_STORE_URI={uri}", server_image,
                                    "db-upgrade", check=False)
        assert upgrade.returncode == 0, upgrade.stderr
        assert f"upgraded from {OLD_REVISION} to " in upgrade.stdout
        assert postgres.password not in upgrade.stdout + upgrade.stderr
        listing = docker_engine.cli("run", "--rm", "-v", f"{volume}:/data", "--entrypoint", "sh",
                                    server_image, "-c", "pg_restore --list "
                                    "/data/mlflow/standalone/backups/legacy_image.*.dump")
        assert "TABLE public runs" in listing.stdout
    finally:
        docker_engine.cli("volume", "rm", "-f", volume, check=False)
