"""The runtime step inside the image the builder made, run the way FuseML runs it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import mlflow
import numpy as np
import requests
from devstack import free_port, wait_until
from helpers import EXAMPLE

ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]


def run_step(docker_engine, image: str, codeset: Path, results: Path, *env: str):
    results.mkdir(mode=0o777, exist_ok=True)
    results.chmod(0o777)  # the step runs as the image's non-root user
    argv = ["run", "--rm", "--network", "host", "-v", f"{codeset}:/project",
            "-v", f"{results}:/tekton/results", "-e", "TASK_RESULT=model-url"]
    for item in env:
        argv += ["-e", item]
    return docker_engine.cli(*argv, image, check=False, timeout=600)


def test_trainer_image_runs_project_and_model_serves(docker_engine, trainer_image,
                                                     mlflow_server, tmp_path: Path) -> None:
    codeset = Path(shutil.copytree(EXAMPLE, tmp_path / "codeset"))
    results = tmp_path / "results"
    run = run_step(docker_engine, trainer_image, codeset, results,
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   "FUSEML_MLFLOW_ENTRYPOINT_ARGS=C=0.7 max_iter=120",
                   "FUSEML_MLFLOW_EXPERIMENT=in-image")
    assert run.returncode == 0, run.stderr[-3000:]
    url = (results / "model-url").read_text()
    assert run.stdout.strip() == url and "/models/m-" in url

    mlflow.set_tracking_uri(mlflow_server.url)
    model = mlflow.pyfunc.load_model(url)
    assert list(model.predict(np.array(ROWS))) == [0, 2]

    port = free_port()
    venv_bin = str(Path(sys.executable).parent)
    server = subprocess.Popen(
        [f"{venv_bin}/mlflow", "models", "serve", "-m", url, "--env-manager", "local",
         "-h", "127.0.0.1", "-p", str(port)],
        env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url,
             "PATH": f"{venv_bin}:{os.environ['PATH']}"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_until(lambda: requests.get(f"http://127.0.0.1:{port}/ping", timeout=2).ok, 120,
                   "mlflow models serve")
        answer = requests.post(f"http://127.0.0.1:{port}/invocations",
                               json={"inputs": ROWS}, timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["predictions"] == [0, 2]
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)


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
