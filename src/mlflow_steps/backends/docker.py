"""Docker engine backend: BuildKit build with secret mounts, then push."""

from __future__ import annotations

import os
import shutil
import subprocess

from mlflow_steps.backends.base import Backend, BuildRequest

CLI_ENV = "MLFLOW_STEPS_DOCKER_CLI"


def _supports_buildkit_secrets(cli: str, env: dict[str, str]) -> bool:
    try:
        result = subprocess.run([cli, "build", "--help"], capture_output=True, text=True,
                                env={**env, "DOCKER_BUILDKIT": "1"}, timeout=30, check=False)
    except OSError:
        return False
    return "--secret" in result.stdout


def find_docker_cli(environ: dict[str, str]) -> str | None:
    """A docker client whose build supports BuildKit secrets (buildx or a built-in BuildKit)."""
    if environ.get(CLI_ENV):
        return environ[CLI_ENV]
    candidates = [shutil.which("docker", path=environ.get("PATH")), "/usr/bin/docker"]
    for cli in dict.fromkeys(c for c in candidates if c and os.path.exists(c)):
        if _supports_buildkit_secrets(cli, environ):
            return cli
    return None


class DockerBackend(Backend):
    """`docker build` (BuildKit) + `docker push` against DOCKER_HOST."""

    name = "docker"

    def __init__(self, environ: dict[str, str]) -> None:
        super().__init__(environ)
        self._cli: str | None = None

    @property
    def cli(self) -> str:
        if self._cli is None:
            self._cli = find_docker_cli(self.environ) or "docker"
        return self._cli

    def unavailable_reason(self) -> str | None:
        if not find_docker_cli(self.environ):
            return "no docker client with BuildKit secret support (buildx) found"
        result = subprocess.run([self.cli, "version", "--format", "{{.Server.Version}}"],
                                capture_output=True, text=True, env=self.environ, timeout=30,
                                check=False)
        if result.returncode != 0:
            host = self.environ.get("DOCKER_HOST", "the default socket")
            return f"no Docker engine answers on {host}"
        return None

    def build_and_push(self, request: BuildRequest) -> None:
        env = {**self.environ, "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(request.docker_config)}
        argv = [self.cli, "build", "--progress", "plain", "--pull=false",
                "-f", str(request.context / "Dockerfile"), "-t", str(request.destination)]
        for secret_id, path in sorted(request.secrets.items()):
            argv += ["--secret", f"id={secret_id},src={path}"]
        argv.append(str(request.context))
        self.run_streaming(argv, env, "docker build")
        self.push([self.cli, "push", str(request.destination)], env, "docker push")
