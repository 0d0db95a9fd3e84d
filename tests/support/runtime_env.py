"""The runtime step run from this venv: its environment, the example codeset, its results."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from support.helpers import EXAMPLE, write_codeset

VENV_BIN = str(Path(sys.executable).parent)
PLAIN_MODEL_JOB = """\
# logs six's version, a model without numpy: a conda environment with just six, markupsafe
# and what the tooling adds
import os, tempfile, mlflow, markupsafe, six
with mlflow.start_run():  # a model without numpy (not in this lock): an MLmodel of its own
    mlflow.log_param("six", six.__version__)
    model = mlflow.initialize_logged_model(name="model")
    with tempfile.TemporaryDirectory() as directory:
        with open(os.path.join(directory, "MLmodel"), "w") as handle:
            handle.write("artifact_path: model\\nflavors: {}\\n")
        mlflow.MlflowClient().log_model_artifacts(model.model_id, directory)
    mlflow.finalize_logged_model(model.model_id, "READY")
"""
SCRIPT_PROJECT = """\
name: scripted
python_env: python_env.yaml
entry_points:
  main:
    parameters:
      message: {type: string, default: hi}
      code: {type: int, default: 0}
    command: "python job.py --message {message} --code {code}"
"""
PYTHON_ENV = "python: '3.11'\ndependencies: [mlflow]\n"


def step_env(tmp_path: Path, tracking_uri: str | None, **extra: str) -> dict[str, str]:
    """The step's environment: the project's python first on PATH, results declared."""
    env = {key: value for key, value in os.environ.items() if not key.startswith(
        ("MLFLOW_", "FUSEML_", "TASK_RESULT", "AWS_"))}
    env.update({"PATH": f"{VENV_BIN}:{env['PATH']}", "TASK_RESULT": "model-url",
                "TASK_RESULT_RUN_ID": "run-id", "TASK_RESULT_MODEL_URI": "model-uri",
                "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "results"), **extra})
    if tracking_uri:
        env["MLFLOW_TRACKING_URI"] = tracking_uri
    return env


def example(tmp_path: Path) -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / "codeset"))


def scripted(tmp_path: Path, job: str) -> Path:
    """A codeset whose entry point runs ``job`` (Python) with --message and --code."""
    return write_codeset(tmp_path / "scripted", {
        "MLproject": SCRIPT_PROJECT, "python_env.yaml": PYTHON_ENV, "job.py": job})


def results(tmp_path: Path) -> dict[str, str]:
    directory = tmp_path / "results"
    return {p.name: p.read_text() for p in directory.iterdir()} if directory.exists() else {}


def run_step(docker_engine, image: str, codeset: Path, results: Path, *env: str,
             infer_requirements: bool = False):
    """The runtime step in ``image`` on ``codeset`` (``env``: NAME=value items). MLflow's
    inference of a model's pip requirements (a child Python importing the model's code, ~5
    s a model) only when ``infer_requirements``: else MLflow logs its flavor's list."""
    results.mkdir(mode=0o777, exist_ok=True)
    results.chmod(0o777)  # the step runs as the image's non-root user
    argv = ["run", "--rm", "--network", "host", "-v", f"{codeset}:/project",
            "-v", f"{results}:/tekton/results", "-e", "TASK_RESULT=model-url"]
    if not infer_requirements:
        argv += ["-e", "MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT=0"]
    for item in env:
        argv += ["-e", item]
    return docker_engine.cli(*argv, image, check=False, timeout=600)
