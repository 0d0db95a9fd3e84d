"""Kaniko backend: /kaniko/executor in-cluster, with its exact flags and auth file."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from mlflow_steps.backends.base import PUSH_ATTEMPTS, Backend, BuildRequest
from mlflow_steps.render import PipConfigDelivery

EXECUTOR_ENV = "MLFLOW_STEPS_KANIKO_EXECUTOR"
DEFAULT_EXECUTOR = "/kaniko/executor"
SECRETS_SUBDIR = "mlflow-steps"


class KanikoBackend(Backend):
    """Runs the executor in this container; /kaniko is never snapshotted into the image."""

    name = "kaniko"

    @property
    def executor(self) -> Path:
        return Path(self.environ.get(EXECUTOR_ENV, DEFAULT_EXECUTOR))

    @property
    def kaniko_dir(self) -> Path:
        return self.executor.parent

    def unavailable_reason(self) -> str | None:
        if os.access(self.executor, os.X_OK):
            return None
        return f"{self.executor} is not an executable (not running in a Kaniko image)"

    def delivery(self, with_ca: bool) -> PipConfigDelivery:
        return PipConfigDelivery(config_file=str(self.kaniko_dir / SECRETS_SUBDIR / "pip.conf"))

    def ca_target(self) -> str:
        return str(self.kaniko_dir / SECRETS_SUBDIR / "pip-ca.pem")

    def secret_dir(self, workspace: Path) -> Path:
        return self.kaniko_dir / SECRETS_SUBDIR

    def argv(self, request: BuildRequest, digest_file: Path) -> list[str]:
        """The executor command line for ``request``."""
        argv = [
            str(self.executor),
            f"--context=dir://{request.context}",
            f"--dockerfile={request.context / 'Dockerfile'}",
            f"--destination={request.destination}",
            f"--digest-file={digest_file}",
            f"--compressed-caching={'true' if request.compressed_caching else 'false'}",
            f"--push-retry={PUSH_ATTEMPTS - 1}",
        ]
        if request.cache or request.cache_repo:
            argv.append("--cache=true")
        if request.cache_repo:
            argv.append(f"--cache-repo={request.cache_repo}")
        if request.insecure(request.destination):
            argv += ["--insecure", "--skip-tls-verify"]
        if request.insecure(request.base_image):
            argv += ["--insecure-pull", "--skip-tls-verify-pull"]
        if request.registry_ca:
            argv.append(f"--registry-certificate={request.destination.registry}="
                        f"{request.registry_ca}")
        argv.append(f"--verbosity={'debug' if request.verbose else 'info'}")
        return argv

    def build_and_push(self, request: BuildRequest) -> None:
        docker_dir = self.kaniko_dir / ".docker"
        docker_dir.mkdir(parents=True, exist_ok=True)
        source = request.docker_config / "config.json"
        if source.is_file() and source.resolve() != (docker_dir / "config.json").resolve():
            shutil.copyfile(source, docker_dir / "config.json")
        digest_file = self.kaniko_dir / SECRETS_SUBDIR / "digest"
        digest_file.parent.mkdir(parents=True, exist_ok=True)
        env = {**self.environ, "DOCKER_CONFIG": str(docker_dir)}
        self.run_streaming(self.argv(request, digest_file), env, "kaniko build")
