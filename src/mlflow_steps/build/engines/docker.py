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
from mlflow_steps.image.layers import LayerCache
from mlflow_steps.image.push import Blob, push_image

MAX_CONFIG_BYTES = 4 << 20
BASE_DIGEST_LABEL = "org.opencontainers.image.base.digest"
UNKNOWN_CREATED = "0001-01-01T00:00:00Z"  # what Docker shows for an image without a time

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
        base = self._base_image(request, env)
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

    def _base_image(self, request: BuildRequest, env: dict[str, str]) -> BaseImage:
        """The base as the build used it: the engine's copy when it has one (a build
        without --pull takes that), else its registry's (BuildKit fetched it into a cache
        of its own, not the engine's images; read by the digest the base label records,
        checked); its blobs, to mount, when that registry is the destination's."""
        base = request.base_image
        result = interrupt.run(
            [self.cli, "image", "inspect", "--format", "{{json .RootFS.Layers}} {{.Created}}",
             str(base)], text=True, env=env, timeout=60)
        engine_copy = None
        if result.returncode == 0:
            engine_layers, engine_created = result.stdout.strip().split(" ", 1)
            engine_copy = BaseImage(tuple(json.loads(engine_layers)), engine_created)
        same_registry = base.registry == request.destination.registry
        if engine_copy and not same_registry:
            return engine_copy
        try:
            layers, diff_ids, created = self._registry_base(request)
        except StepError as exc:
            if engine_copy:
                return engine_copy
            raise StepError(f"cannot read the base image {base}: the engine has none "
                            f"({result.stderr.strip()[-200:]}) and {exc}",
                            source=self.name) from None
        if engine_copy and engine_copy.diff_ids != diff_ids:
            return engine_copy  # the engine's copy is another (older) image of the tag
        blobs = tuple(Blob(layer, mount_from=base.repository)
                      for layer in layers) if same_registry else ()
        return BaseImage(diff_ids, engine_copy.created if engine_copy else created, blobs)

    @staticmethod
    def _registry_base(request: BuildRequest) -> tuple[list[dict], tuple[str, ...], str]:
        """The base's layer descriptors, diff_ids and creation time from its registry (the
        platform we build for)."""
        base = request.base_image
        reference = request.labels.get(BASE_DIGEST_LABEL) or base.tag
        client = request.registries.client(base.registry)
        _, manifest = client.manifest(base.repository, reference)
        try:
            config = json.loads(client.blob(base.repository, manifest["config"]["digest"],
                                            MAX_CONFIG_BYTES))
            layers, diff_ids = manifest["layers"], config["rootfs"]["diff_ids"]
            if not (isinstance(layers, list) and isinstance(diff_ids, list)
                    and all(isinstance(d, str) for d in diff_ids)):
                raise TypeError
        except (KeyError, TypeError, ValueError, RecursionError):
            raise StepError(f"{base}: its manifest or config is not an image's",
                            source=client.transport.source) from None
        return layers, tuple(diff_ids), str(config.get("created") or UNKNOWN_CREATED)
