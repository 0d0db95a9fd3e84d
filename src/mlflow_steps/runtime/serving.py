"""The serving step: run `mlflow models serve` on a model in its runtime image, detached.

The step talks to a Docker engine (the mounted socket), starts the server container on
the host network, waits until it answers ``/ping`` and returns the prediction URL. A
container of the same app name is replaced, so re-running a workflow redeploys.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import time
from dataclasses import dataclass

import requests

from mlflow_steps.build.engines.docker import CLI_ENV
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import Redactor, secret_values

FORWARDED_PREFIXES = ("MLFLOW_", "AWS_")
NOT_FORWARDED = ("MLFLOW_STEPS_",)
APP_LABEL = "org.mlflow-steps.app"
LOG_TAIL = 15
ENGINE_TIMEOUT_SECONDS = 300

# What the docker CLI prints around the engine's error: usage hints, pull progress.
_NOISE = re.compile(
    r"^(see '.*--help'\.?|run '.*--help' for more information\.?|usage:.*|"
    r"unable to find image .* locally|[\w./:-]+: pulling from .*|[0-9a-f]{12}: .*|"
    r"digest: .*|status: .*|pulling fs layer|waiting|downloading.*|extracting.*)$",
    re.IGNORECASE)
_ERROR_WORDS = re.compile(
    r"error|denied|cannot|can't|failed|invalid|no such|not found|unknown|refused|"
    r"unauthori[sz]ed|forbidden|conflict|timeout|timed out|permission", re.IGNORECASE)
_EXCEPTION = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception|Exit|Interrupt)\b.*")


@dataclass(frozen=True)
class ServeInputs:
    """The serving step's inputs."""

    model: str
    runtime_image: str
    app_name: str = "model"
    port: int | None = None
    advertise_host: str = "127.0.0.1"
    timeout: float = 300.0


def container_name(app_name: str) -> str:
    """A Docker container name for ``app_name``."""
    slug = re.sub(r"[^a-zA-Z0-9_.-]+", "-", app_name).strip("-.") or "model"
    return f"mlflow-serve-{slug}"[:120]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def forwarded_variables(environ: dict[str, str]) -> list[str]:
    """Names (never values) of the MLflow/S3 settings the server container needs."""
    return sorted(name for name, value in environ.items()
                  if name.startswith(FORWARDED_PREFIXES) and not name.startswith(NOT_FORWARDED)
                  and value)


def engine_error(output: str) -> str:
    """The engine's actual error in the docker CLI's output: the first meaningful line
    (not a usage hint, not pull progress) that says what went wrong."""
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    meaningful = [line for line in lines if not _NOISE.match(line)] or ["no output"]
    line = next((line for line in meaningful if _ERROR_WORDS.search(line)), meaningful[0])
    return line.removeprefix("docker: ")


def server_error(logs: str) -> str:
    """What made the model server stop: its last exception line, else its last lines."""
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    errors = [line for line in lines if _EXCEPTION.match(line)]
    return errors[-1] if errors else " | ".join(lines[-LOG_TAIL:]) or "no output"


class Engine:
    """The docker CLI against DOCKER_HOST (values passed by name stay out of argv)."""

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ
        self.redact = Redactor(secret_values(environ))
        self.cli = environ.get(CLI_ENV) or shutil.which("docker", path=environ.get("PATH"))
        if not self.cli:
            raise StepError("no docker client found (set MLFLOW_STEPS_DOCKER_CLI)",
                            field="engine")

    def __call__(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            result = subprocess.run([self.cli, *args], env=self.environ, capture_output=True,
                                    text=True, timeout=ENGINE_TIMEOUT_SECONDS, check=False)
        except subprocess.TimeoutExpired:
            raise StepError(f"docker {args[0]} did not finish within "
                            f"{ENGINE_TIMEOUT_SECONDS}s: is the engine at DOCKER_HOST "
                            "responsive?", field="engine") from None
        if check and result.returncode != 0:
            error = engine_error(result.stderr or result.stdout)
            raise StepError(f"docker {args[0]} failed: {self.redact(error)}", field="engine")
        return result


def _answers(url: str) -> bool:
    try:
        return requests.get(url, timeout=2).status_code == 200
    except requests.RequestException:
        return False


def serve_model(inputs: ServeInputs, environ: dict[str, str] | None = None) -> str:
    """Start the model server container; the URL that answers prediction requests."""
    environ = dict(os.environ if environ is None else environ)
    for field in ("model", "runtime_image"):
        if not getattr(inputs, field).strip():
            raise StepError("is empty", field=field)
    engine = Engine(environ)
    name = container_name(inputs.app_name)
    port = inputs.port or free_port()
    engine("rm", "--force", name, check=False)
    argv = ["run", "--detach", "--name", name, "--network", "host",
            "--label", f"{APP_LABEL}={inputs.app_name}"]
    for variable in forwarded_variables(environ):
        argv += ["--env", variable]
    argv += [inputs.runtime_image, "mlflow", "models", "serve", "-m", inputs.model,
             "--env-manager", "local", "-h", "0.0.0.0", "-p", str(port)]
    engine(*argv)
    print(f"mlflow-steps: serving {inputs.model} in container {name} on port {port}",
          file=sys.stderr, flush=True)

    deadline = time.monotonic() + inputs.timeout
    while not _answers(f"http://127.0.0.1:{port}/ping"):
        running = engine("inspect", "--format", "{{.State.Running}}", name, check=False)
        if running.stdout.strip() != "true" or time.monotonic() > deadline:
            logs = engine("logs", "--tail", str(LOG_TAIL * 4), name, check=False)
            error = server_error(logs.stdout + "\n" + logs.stderr)
            engine("rm", "--force", name, check=False)
            why = "exited" if running.stdout.strip() != "true" else (
                f"did not answer within {inputs.timeout:.0f}s")
            raise StepError(f"model server {why}: {engine.redact(error)}", field="model")
        time.sleep(1)
    return f"http://{inputs.advertise_host}:{port}/invocations"
