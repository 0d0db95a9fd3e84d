"""A run the runtime step created never stays RUNNING: an entry point that cannot start ends
it FAILED, a signal to the step KILLED; one line says why and no step output is written."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import mlflow
import pytest
from support.helpers import run_cli, write_codeset
from support.runtime_env import PYTHON_ENV, VENV_BIN, results, step_env

JOB = "import sys, time\nprint('started', flush=True)\n"


def codeset(tmp_path: Path, command: str, **files: str) -> Path:
    project = (f"name: status\npython_env: python_env.yaml\nentry_points:\n  main:\n"
               f"    command: \"{command}\"\n")
    return write_codeset(tmp_path / "codeset", {"MLproject": project, "python_env.yaml": PYTHON_ENV,
                                                "job.py": JOB, **files})


def the_run(server_url: str, experiment: str):
    """The one run the step created in ``experiment``."""
    client = mlflow.MlflowClient(server_url, server_url)
    runs = client.search_runs([client.get_experiment_by_name(experiment).experiment_id])
    assert len(runs) == 1
    return runs[0]


def alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie left to a parent that does not reap does not)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def reason(stderr: str) -> str:
    """The step's last line, which must say why, with no traceback before it."""
    assert "Traceback" not in stderr, stderr
    return stderr.strip().splitlines()[-1]


@pytest.mark.parametrize(("command", "files", "codes", "words"), [
    ("no-such-trainer --epochs 3", {}, {127},
     "entry point 'main' could not start (exit code 127): no-such-trainer: command not found"),
    ("/opt/missing-env/bin/python job.py", {}, {127}, "could not start (exit code 127): "
     "/opt/missing-env/bin/python: No such file or directory"),
    # bash < 5.2 says "bad interpreter" (126), later ones "required file not found" (127)
    ("./train.py", {"train.py": "#!/opt/missing-env/bin/python\nprint('never')\n"},
     {126, 127}, "could not start (exit code 12"),
    ("cd no-such-dir && python job.py", {}, {1},
     "exited with code 1: cd: no-such-dir: No such file or directory"),
])
def test_entry_point_that_cannot_start_fails_the_run(
        mlflow_server, tmp_path: Path, command: str, files: dict[str, str], codes: set[int],
        words: str) -> None:
    experiment = f"status-{uuid.uuid4().hex[:8]}"
    project = codeset(tmp_path, command, **files)
    if "train.py" in files:
        (project / "train.py").chmod(0o755)
    env = step_env(tmp_path, mlflow_server.url, FUSEML_MLFLOW_EXPERIMENT=experiment)
    result = run_cli("run", str(project), env=env)
    assert result.returncode in codes, result.stderr
    line = reason(result.stderr)
    assert line.startswith("mlflow-steps: error: ") and words in line, line
    run = the_run(mlflow_server.url, experiment)
    assert f"run {run.info.run_id} is marked FAILED" in line
    assert run.info.status == "FAILED"
    assert results(tmp_path) == {} and result.stdout == ""


def test_missing_shell_fails_the_run(mlflow_server, tmp_path: Path) -> None:
    """The image has no bash to run MLflow's command form: the run is FAILED all the same."""
    experiment = f"status-{uuid.uuid4().hex[:8]}"
    env = step_env(tmp_path, mlflow_server.url, FUSEML_MLFLOW_EXPERIMENT=experiment,
                   PATH=VENV_BIN)
    result = run_cli("run", str(codeset(tmp_path, "python job.py")), env=env)
    assert result.returncode == 2, result.stderr
    line = reason(result.stderr)
    assert "entry point 'main' could not start: bash: No such file or directory" in line, line
    assert the_run(mlflow_server.url, experiment).info.status == "FAILED"
    assert results(tmp_path) == {}


@pytest.mark.parametrize("ignores_sigterm", [False, True])
def test_sigterm_kills_the_run(mlflow_server, tmp_path: Path, ignores_sigterm: bool) -> None:
    """SIGTERM to the step while the entry point runs: the entry point's process group ends
    (SIGKILL when it ignores SIGTERM), the run is KILLED, the step exits 143."""
    experiment = f"status-{uuid.uuid4().hex[:8]}"
    job = (JOB + ("import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                  if ignores_sigterm else "")
           + "import os\nopen('pid', 'w').write(str(os.getpid()))\ntime.sleep(600)\n")
    project = codeset(tmp_path, "python job.py", **{"job.py": job})
    env = step_env(tmp_path, mlflow_server.url, FUSEML_MLFLOW_EXPERIMENT=experiment)
    step = subprocess.Popen([sys.executable, "-m", "mlflow_steps", "run", str(project)],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not (project / "pid").is_file() or not (project / "pid").read_text():
            assert step.poll() is None and time.monotonic() < deadline, step.communicate()
            time.sleep(0.1)
        started = time.monotonic()
        step.send_signal(signal.SIGTERM)
        stdout, stderr = step.communicate(timeout=30)
    finally:
        step.kill()
    assert time.monotonic() - started < 8  # within the exit deadline
    assert step.returncode == 128 + signal.SIGTERM, stderr
    assert reason(stderr) == "mlflow-steps: interrupted by SIGTERM"
    assert the_run(mlflow_server.url, experiment).info.status == "KILLED"
    assert not alive(int((project / "pid").read_text()))
    assert results(tmp_path) == {} and stdout == ""
