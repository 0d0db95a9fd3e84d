"""The runtime step inside the image the builder made, run the way FuseML runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import pytest
import requests
from devstack import free_port, wait_until
from support.helpers import EXAMPLE, IRIS_ROWS, predictions
from support.runtime_env import run_step


@pytest.fixture(scope="module")
def trained_model(docker_engine, trainer_image, mlflow_server, tmp_path_factory) -> str:
    """Run the trainer image on the example once; the model URL it output."""
    tmp_path = tmp_path_factory.mktemp("trained")
    codeset = Path(shutil.copytree(EXAMPLE, tmp_path / "codeset"))
    results = tmp_path / "results"
    run = run_step(docker_engine, trainer_image, codeset, results,
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   "FUSEML_MLFLOW_ENTRYPOINT_ARGS=C=0.7 max_iter=120",
                   "FUSEML_MLFLOW_EXPERIMENT=in-image")
    assert run.returncode == 0, run.stderr[-3000:]
    url = (results / "model-url").read_text()
    assert run.stdout.strip() == url and "/models/m-" in url
    return url


def test_model_from_image_loads_and_serves(trained_model, mlflow_server) -> None:
    mlflow.set_tracking_uri(mlflow_server.url)
    model = mlflow.pyfunc.load_model(trained_model)
    assert list(model.predict(np.array(IRIS_ROWS))) == [0, 2]

    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    server = subprocess.Popen(
        [f"{venv_bin}/mlflow", "models", "serve", "-m", trained_model, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url,
             "PATH": f"{venv_bin}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok, 120,
                   "mlflow models serve")
        assert predictions(f"http://127.0.0.1:{port}/invocations") == [0, 2]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


def test_serve_step_runs_model_server_in_runtime_image(docker_engine, serve_image,
                                                       trainer_image, trained_model,
                                                       mlflow_server, tmp_path: Path) -> None:
    results = tmp_path / "results"
    results.mkdir()
    socket = docker_engine.host.removeprefix("unix://")
    step = ["run", "--rm", "--network", "host", "-v", f"{socket}:/var/run/docker.sock",
            "-v", f"{results}:/tekton/results", "-e", "TASK_RESULT=prediction-url",
            "-e", f"FUSEML_MODEL={trained_model}", "-e", f"FUSEML_RUNTIME_IMAGE={trainer_image}",
            "-e", "FUSEML_APP_NAME=iris test", "-e", f"MLFLOW_TRACKING_URI={mlflow_server.url}",
            "-e", "AWS_SECRET_ACCESS_KEY=never-printed-secret", serve_image]
    try:
        first = docker_engine.cli(*step, check=False, timeout=600)
        assert first.returncode == 0, first.stderr[-3000:]
        url = (results / "prediction-url").read_text()
        assert first.stdout.strip() == url
        assert predictions(url) == [0, 2]
        assert "never-printed-secret" not in first.stdout + first.stderr
        inspect = docker_engine.cli("inspect", "--format", "{{json .Config.Env}}",
                                    "mlflow-serve-iris-test").stdout
        assert "AWS_SECRET_ACCESS_KEY=never-printed-secret" in inspect  # passed by name

        again = docker_engine.cli(*step, check=False, timeout=600)  # redeploy replaces it
        assert again.returncode == 0, again.stderr[-3000:]
        assert predictions((results / "prediction-url").read_text()) == [0, 2]
        names = docker_engine.cli("ps", "--filter", "label=org.mlflow-steps.app",
                                  "--format", "{{.Names}}").stdout.split()
        assert names == ["mlflow-serve-iris-test"]
    finally:
        docker_engine.cli("rm", "--force", "mlflow-serve-iris-test", check=False)


def test_serve_step_reports_a_model_that_cannot_load(docker_engine, trainer_image,
                                                     mlflow_server, tmp_path: Path) -> None:
    from support.helpers import run_cli

    env = {**docker_engine.env(), "MLFLOW_TRACKING_URI": mlflow_server.url,
           "TASK_RESULT": "prediction-url", "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "out")}
    result = run_cli("serve", "--model", "models:/no-such-model/1", "--runtime-image",
                     trainer_image, "--app-name", "broken", env=env)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        "mlflow-steps: error: model: model server exited:")
    assert not (tmp_path / "out").exists()
    assert docker_engine.cli("ps", "-a", "--filter", "name=mlflow-serve-broken",
                             "--format", "{{.Names}}").stdout.strip() == ""


def test_trainer_image_failure_writes_no_output(docker_engine, trainer_image, mlflow_server,
                                                tmp_path: Path) -> None:
    codeset = Path(shutil.copytree(EXAMPLE, tmp_path / "codeset"))
    results = tmp_path / "results"
    run = run_step(docker_engine, trainer_image, codeset, results,
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   "FUSEML_MLFLOW_ENTRYPOINT_ARGS=max_iter=-5")  # sklearn rejects it
    assert run.returncode == 1, run.stderr[-2000:]
    assert "exited with code 1" in run.stderr.splitlines()[-1]
    assert list(results.iterdir()) == []
