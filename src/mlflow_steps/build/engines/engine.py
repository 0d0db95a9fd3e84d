"""The build-engine interface and the live, prefixed log streaming they share."""

from __future__ import annotations

import collections
import contextlib
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_steps.build.image_plan import ImagePlan
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.env.pipconfig import BuildPipConfig
from mlflow_steps.image.client import RegistryClients
from mlflow_steps.image.reference import ImageRef, is_insecure

TAIL_LINES = 12
PUSH_ATTEMPTS = 3
# What a registry answers while another push of the same blobs is still in flight (the
# reference registry also answers 500 to a concurrent upload of one blob), or when it is
# briefly unavailable.
TRANSIENT_PUSH_ERRORS = ("blob unknown", "digest invalid", "blob upload unknown",
                         "blob upload invalid", "unexpected eof", "connection reset",
                         "500 internal server error", "502 bad gateway",
                         "503 service unavailable")


@dataclass(frozen=True)
class BuildRequest:
    """One build-and-push: everything an engine needs, secrets as file paths only."""

    context: Path | None  # the rendered Dockerfile context (none for the direct builder)
    destination: ImageRef
    base_image: ImageRef
    docker_config: Path
    registries: RegistryClients = field(compare=False)  # the command's (one per host)
    secrets: dict[str, Path] = field(default_factory=dict)
    insecure_registries: tuple[str, ...] = ()
    registry_ca: Path | None = None
    compressed_caching: bool = False
    cache: bool = False
    no_cache: bool = False  # no engine cache: Docker --no-cache, Buildah a store of its own
    cache_repo: str | None = None
    source_date_epoch: int | None = None  # set: reproducible, every time clamped to it
    labels: dict[str, str] = field(default_factory=dict)  # added to the Dockerfile's
    verbose: bool = False
    # What the engine-free builder lays out itself (engines read the rendered context)
    plan: ImagePlan | None = field(default=None, compare=False)
    pip: BuildPipConfig | None = field(default=None, compare=False)
    compression: str = "gzip"

    @property
    def reproducible(self) -> bool:
        return self.source_date_epoch is not None

    def insecure(self, ref: ImageRef) -> bool:
        return is_insecure(ref.registry, self.insecure_registries)


class Backend(ABC):
    """A container engine that builds a context and pushes the result."""

    name = "abstract"
    needs_context = True  # builds the rendered Dockerfile context

    def __init__(self, environ: dict[str, str]) -> None:
        self.environ = environ

    @abstractmethod
    def unavailable_reason(self) -> str | None:
        """None when the engine can be used here, else why not."""

    @abstractmethod
    def build_and_push(self, request: BuildRequest) -> None:
        """Build ``request.context`` and push it to ``request.destination``."""

    def push(self, argv: list[str], env: dict[str, str], what: str) -> None:
        """Run a push command; retry it when the registry's answer is a transient race."""
        for attempt in range(1, PUSH_ATTEMPTS + 1):
            try:
                self.run_streaming(argv, env, what)
                return
            except StepError as exc:
                transient = any(marker in str(exc).lower() for marker in TRANSIENT_PUSH_ERRORS)
                if attempt == PUSH_ATTEMPTS or not transient:
                    raise
            print(f"[{self.name}] {what}: transient registry error, retry {attempt} of "
                  f"{PUSH_ATTEMPTS - 1}", file=sys.stderr, flush=True)
            time.sleep(2 * attempt)

    def run_streaming(self, argv: list[str], env: dict[str, str], what: str) -> None:
        """Run argv, stream its output prefixed to stderr, fail with its last lines."""
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)
        with contextlib.ExitStack() as stack:  # its process group ends with an interruption
            try:
                process = stack.enter_context(interrupt.child(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                    errors="replace"))
            except OSError as exc:
                raise StepError(f"cannot start {argv[0]}: {exc.strerror}",
                                source=self.name) from None
            assert process.stdout is not None
            for line in process.stdout:
                line = line.rstrip()
                tail.append(line)
                print(f"[{self.name}] {line}", file=sys.stderr, flush=True)
        if process.returncode != 0:
            last = " | ".join(x.strip() for x in tail if x.strip())
            raise StepError(f"{what} failed (exit {process.returncode}): {last}",
                            source=self.name)
