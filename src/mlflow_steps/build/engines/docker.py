"""Docker engine backend: BuildKit build with secret mounts, then push."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys

from mlflow_steps.build.engines.docker_archive import BaseImage, normalised_parts
from mlflow_steps.build.engines.engine import Backend, BuildRequest
from mlflow_steps.core import interrupt
from mlflow_steps.core.cache import cache_root
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.pip_secrets import secret_arguments
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.layers import LayerCache
from mlflow_steps.image.push import Blob, push_image

MAX_CONFIG_BYTES = 4 << 20

CLI_ENV = "MLFLOW_STEPS_DOCKER_CLI"


def _supports_buildkit_secrets(cli: str, env: dict[str, str]) -> bool:
    try:
        result = interrupt.run([cli, "build", "--help"], text=True,
                               env={**env, "DOCKER_BUILDKIT": "1"}, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
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
        result = interrupt.run([self.cli, "version", "--format", "{{.Server.Version}}"],
                               text=True, env=self.environ, timeout=30)
        if result.returncode != 0:
            host = self.environ.get("DOCKER_HOST", "the default socket")
            return f"no Docker engine answers on {host}"
        return None

    def build_and_push(self, request: BuildRequest) -> None:
        env = {**self.environ, "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(request.docker_config)}
        argv = [self.cli, "build", "--progress", "plain", "--pull=false",
                *(["--no-cache"] if request.no_cache else []),
                "-f", str(request.context / "Dockerfile"), "-t", str(request.destination)]
        argv += secret_arguments(request.secrets)
        for key, value in sorted(request.labels.items()):
            argv += ["--label", f"{key}={value}"]
        argv.append(str(request.context))
        self.run_streaming(argv, env, "docker build")
        if request.source_date_epoch is None:
            self.push([self.cli, "push", str(request.destination)], env, "docker push")
        else:
            self.push_reproducibly(request, request.source_date_epoch, env)

    def push_reproducibly(self, request: BuildRequest, epoch: int, env: dict[str, str]) -> None:
        """Save the image, rewrite its own layers deterministically, push them ourselves."""
        client = request.registries.client(request.destination.registry)
        base = self._base_image(request, client, env)
        with interrupt.private_directory("docker-save-") as workdir:
            archive = workdir / "image.tar"
            self.run_streaming([self.cli, "save", "-o", str(archive), str(request.destination)],
                               env, "docker save")
            known = LayerCache(cache_root(self.environ) / "layers")
            repository = request.destination.repository
            config, blobs = normalised_parts(
                archive, base, epoch, workdir, known,
                lambda digest: client.has_blob(repository, digest))
            archive.unlink()
            digest = push_image(client, request.destination.repository,
                                request.destination.tag, config, blobs, workdir)
        print(f"[{self.name}] pushed {request.destination} reproducibly ({digest})",
              file=sys.stderr, flush=True)

    def _base_image(self, request: BuildRequest, client: RegistryClient,
                    env: dict[str, str]) -> BaseImage:
        """The base's layers and time from the engine; its blobs when the destination's
        registry has them (mounted across repositories, not re-uploaded)."""
        result = interrupt.run(
            [self.cli, "image", "inspect", "--format", "{{json .RootFS.Layers}} {{.Created}}",
             str(request.base_image)], text=True, env=env, timeout=60)
        if result.returncode != 0:
            raise StepError(f"cannot inspect the base image {request.base_image}: "
                            f"{result.stderr.strip()[-300:]}", source=self.name)
        layers, created = result.stdout.strip().split(" ", 1)
        diff_ids = tuple(json.loads(layers))
        base = request.base_image
        if base.registry != request.destination.registry:
            return BaseImage(diff_ids, created)
        try:
            _, manifest = client.manifest(base.repository, base.tag)
            config = json.loads(client.blob(base.repository, manifest["config"]["digest"],
                                            MAX_CONFIG_BYTES))
        except (StepError, KeyError, TypeError, ValueError):
            return BaseImage(diff_ids, created)
        if tuple(config.get("rootfs", {}).get("diff_ids", ())) != diff_ids:
            return BaseImage(diff_ids, created)
        return BaseImage(diff_ids, created, tuple(
            Blob(layer, mount_from=base.repository) for layer in manifest["layers"]))
