"""The container engine a local run uses: Docker, through the Docker SDK for Python."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import docker.errors
import requests
from docker.types import DeviceRequest, Mount

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.reference import ImageRef

ENGINE_SOCKET_LABEL = "org.mlflow-steps.engine-socket"
PIP_CONFIG_LABEL = "org.mlflow-steps.pip-config"
SOCKET_IN_CONTAINER = "/var/run/docker.sock"
DEFAULT_ENGINE = "unix:///var/run/docker.sock"
# Seconds one engine request may take (removing a container that holds gigabytes, an image
# builder's, takes minutes on a slow disk); MLFLOW_STEPS_ENGINE_TIMEOUT overrides it.
ENGINE_TIMEOUT = 600


@dataclass(frozen=True)
class ContainerSpec:
    """One step container: image, env, bind mounts (host → container) and where it runs."""

    name: str
    image: str
    env: dict[str, str]
    mounts: tuple[tuple[Path, str], ...]
    working_dir: str | None
    network: str
    labels: dict[str, str] = field(default_factory=dict)
    command: tuple[str, ...] | None = None  # replaces the image's entrypoint and command
    security_options: tuple[str, ...] = ()
    gpus: int = 0  # GPUs asked of the engine (the NVIDIA container toolkit's device request)

    def create_arguments(self) -> dict[str, Any]:
        """The Docker SDK's ``containers.create`` keyword arguments for this container."""
        return {
            "name": self.name, "environment": self.env, "working_dir": self.working_dir,
            "mounts": [Mount(target, str(source), type="bind") for source, target in self.mounts],
            "network_mode": self.network, "labels": self.labels,
            "entrypoint": list(self.command[:1]) if self.command else None,
            "command": list(self.command[1:]) if self.command else None,
            "security_opt": list(self.security_options) or None,
            # what `docker run --gpus N` asks for
            "device_requests": [DeviceRequest(count=self.gpus, capabilities=[["gpu"]])]
            if self.gpus else None}


@dataclass(frozen=True)
class ImageInfo:
    """What the runner needs to know of a step image."""

    labels: dict[str, str]
    user: str = ""  # the image's USER ("" = root)
    digest: str = ""  # the registry digest it was pulled by ("" = built here, never pushed)


class DockerEngine:
    """Pull, inspect and run containers; a run always ends with its container removed."""

    def __init__(self, base_url: str | None, timeout: float = ENGINE_TIMEOUT) -> None:
        self.base_url, self.timeout = base_url or DEFAULT_ENGINE, timeout
        try:
            self.client = docker.DockerClient(base_url=self.base_url, timeout=timeout)
            self.client.ping()
        except (docker.errors.DockerException, requests.RequestException) as exc:
            raise StepError(f"cannot reach the Docker engine: {exc}",
                            source=self.base_url) from None

    def socket(self) -> Path | None:
        """The engine's unix socket on this machine, if it is reached through one."""
        if self.base_url.startswith("unix://"):
            return Path(self.base_url.removeprefix("unix://"))
        return None

    def prepare(self, reference: str) -> ImageInfo:
        """Pull ``reference`` unless present; return its labels and user."""
        try:
            image = self.client.images.get(reference)
        except docker.errors.ImageNotFound:
            try:
                image = self.client.images.pull(reference)
            except docker.errors.APIError as exc:
                raise StepError(f"cannot pull image: {exc.explanation or exc}",
                                source=reference) from None
        wanted = ImageRef.parse(reference)
        digests = [ref.tag for ref in map(ImageRef.parse, image.attrs.get("RepoDigests") or [])
                   if (ref.registry, ref.repository) == (wanted.registry, wanted.repository)]
        return ImageInfo(dict(image.labels or {}), image.attrs["Config"].get("User") or "",
                         digests[0] if digests else "")

    def run(self, spec: ContainerSpec, on_line: Callable[[str], None]) -> int:
        """Run to completion, streaming output lines; return the exit code."""
        try:
            container = self.client.containers.create(spec.image, **spec.create_arguments())
        except docker.errors.APIError as exc:
            raise StepError(f"cannot create the container: {exc.explanation or exc}",
                            source=spec.image) from None
        try:
            try:
                container.start()
            except docker.errors.APIError as exc:
                asked = f" with {spec.gpus} GPU(s)" if spec.gpus else ""
                raise StepError(f"cannot start the container{asked}: "
                                f"{exc.explanation or exc}", source=spec.image) from None
            pending = b""
            for chunk in container.logs(stream=True, follow=True):
                *lines, pending = (pending + chunk).split(b"\n")
                for line in lines:
                    on_line(line.decode("utf-8", "replace").rstrip("\r"))
            if pending:
                on_line(pending.decode("utf-8", "replace"))
            return int(container.wait()["StatusCode"])
        except docker.errors.APIError as exc:
            raise StepError(f"container failed to run: {exc.explanation or exc}",
                            source=spec.image) from None
        except requests.RequestException as exc:
            raise StepError(f"the engine did not answer within {self.timeout:g} s while the "
                            f"container ran ({type(exc).__name__})", source=self.base_url
                            ) from None
        finally:
            self._remove(container)

    def _remove(self, container: Any) -> None:
        try:
            container.remove(force=True)
        except requests.RequestException as exc:
            raise StepError(f"the engine did not remove container {container.name} within "
                            f"{self.timeout:g} s ({type(exc).__name__}); remove it with "
                            f"`docker rm -f {container.name}`", source=self.base_url) from None
