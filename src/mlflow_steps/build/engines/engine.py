"""The build-engine interface, the live, prefixed log streaming they share, and the one
line a failed build is reported by (:func:`failure_cause`, also the workflow runner's)."""

from __future__ import annotations

import collections
import contextlib
import os
import re
import subprocess
import sys
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from mlflow_steps.build.fuseml import OWN_LAYER_MB
from mlflow_steps.build.image_plan import ImagePlan
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import secret_values
from mlflow_steps.core.terminal import shown
from mlflow_steps.env.pipconfig import BuildPipConfig
from mlflow_steps.image.client import RegistryClients
from mlflow_steps.image.platforms import DEFAULT_PLATFORMS
from mlflow_steps.image.reference import ImageRef, is_insecure

CAUSE_LINES = 40  # the last lines of a failed command's log its cause is looked for in
CAUSE_CHARS = 300
PUSH_ATTEMPTS = 3
# What a registry answers while another push of the same blobs is still in flight (the
# reference registry also answers 500 to a concurrent upload of one blob), or when it is
# briefly unavailable.
TRANSIENT_PUSH_ERRORS = ("blob unknown", "digest invalid", "blob upload unknown",
                         "blob upload invalid", "unexpected eof", "connection reset",
                         "500 internal server error", "502 bad gateway",
                         "503 service unavailable")
# Not the command's own text: the "[engine] " of a builder's lines read by the workflow
# runner, and BuildKit's "#7 0.912 " (a step's own "#7 ERROR: ..." keeps its "#7 ") or, in
# its summary of a failed step, "0.912 ".
_LOG_PREFIX = re.compile(r"(?:\[[\w.-]+\] )?(?:#\d+ (?=\d+\.\d+ ))?(?:\d+\.\d+ )?")
# What package tools say failed: uv's "error: ..." with the "  cause: ..." lines under it
# (before uv 0.5: "  Caused by: ..."), pip's "ERROR: ...". (A line's text may hold any
# character: it is escaped once the cause is chosen.)
_TOOL_ERRORS = (
    ("uv", re.compile(r"error: (?!failed to (?:solve|build))(?P<message>.+)", re.DOTALL)),
    ("pip", re.compile(r"ERROR: (?!failed to (?:solve|build))(?P<message>.+)", re.DOTALL)))
_UV_CAUSE = re.compile(r"\s+(?:cause|Caused by): (?P<message>.+)", re.DOTALL)
# An engine's (or our own) last word when no tool said why.
_ENGINE_ERRORS = tuple(re.compile(pattern, re.DOTALL) for pattern in (
    r"(?:ERROR: |error: )?(?P<message>failed to (?:solve|build)\b.+)",  # BuildKit
    r"(?P<message>executor failed running .+)",  # BuildKit in Docker 20.10
    r"(?P<message>error building image: .+)",  # Kaniko
    r"Error: (?P<message>.+)",  # Buildah
    r"mlflow-steps: error: (?P<message>.+)",  # a builder step in a container
))


def failure_cause(lines: Iterable[str], secrets: Iterable[str] = ()) -> str:
    """Why a build failed, from the last lines of its log, as one line of at most
    ``CAUSE_CHARS`` characters, shown (credentials masked, control characters escaped): the
    last error a package tool printed (``uv: <error>: <cause>...``, ``pip: <error>``), else
    the engine's last error (Docker/BuildKit, Kaniko, Buildah, ours), else the last line."""
    texts = [_LOG_PREFIX.sub("", line.rstrip(), count=1) for line in lines]
    cause = _tool_error(texts) or next(
        (match["message"] for text in reversed(texts) for pattern in _ENGINE_ERRORS
         if (match := pattern.fullmatch(text))), None)
    cause = cause or next((text.strip() for text in reversed(texts) if text.strip()),
                          "no output")
    cause = shown(cause, secrets)
    if len(cause) <= CAUSE_CHARS:
        return cause
    tail = CAUSE_CHARS // 3  # what a long line ends with (an exit code, the last cause)
    return f"{cause[:CAUSE_CHARS - tail - 3]} … {cause[-tail:]}"


def _tool_error(texts: list[str]) -> str | None:
    """The last package tool's error in ``texts``, uv's causes joined to it."""
    for index in range(len(texts) - 1, -1, -1):
        for tool, pattern in _TOOL_ERRORS:
            if match := pattern.fullmatch(texts[index]):
                parts = [match["message"]]
                for text in texts[index + 1:]:
                    if not (cause := _UV_CAUSE.fullmatch(text)):
                        break
                    parts.append(cause["message"])
                return f"{tool}: " + ": ".join(parts)
    return None


class CommandFailed(StepError):
    """An engine command exited non-zero: the cause and the log in one line; ``tail`` holds
    its last lines (shown), ``log`` the file kept with all of them."""

    def __init__(self, message: str, *, source: str, tail: tuple[str, ...], log: Path) -> None:
        super().__init__(message, source=source)
        self.tail, self.log = tail, log


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
    own_layer_bytes: int = OWN_LAYER_MB << 20  # a distribution this large: a layer alone
    quiet: bool = False  # no progress shown
    platforms: tuple[str, ...] = DEFAULT_PLATFORMS  # the direct builder's (engines: amd64)
    # the direct builder's conda channels (engines get them installed in the context); may
    # carry credentials
    conda_channel_alias: str | None = field(default=None, compare=False, repr=False)

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
            except CommandFailed as exc:
                said = "\n".join(exc.tail).lower()
                transient = any(marker in said for marker in TRANSIENT_PUSH_ERRORS)
                if attempt == PUSH_ATTEMPTS or not transient:
                    raise
                exc.log.unlink()  # only the log of the failure reported is kept
            print(f"[{self.name}] {what}: transient registry error, retry {attempt} of "
                  f"{PUSH_ATTEMPTS - 1}", file=sys.stderr, flush=True)
            time.sleep(2 * attempt)

    def run_streaming(self, argv: list[str], env: dict[str, str], what: str) -> None:
        """Run argv; stream its output, each line shown (credentials masked, control
        characters escaped), prefixed to stderr and into a log file; when it fails, fail
        with one line: why (``failure_cause``) and where the log is (kept, else removed)."""
        secrets = secret_values(env)
        tail: collections.deque[str] = collections.deque(maxlen=CAUSE_LINES)
        with contextlib.ExitStack() as stack:  # its process group ends with an interruption
            with interrupt.deferred():  # the log is removed should it be interrupted
                descriptor, name = tempfile.mkstemp(prefix=f"mlflow-steps-{self.name}-",
                                                    suffix=".log", dir=env.get("TMPDIR"))
                log_path = Path(name)
                stack.enter_context(interrupt.scratch(log_path, keep=True))
            log = stack.enter_context(os.fdopen(descriptor, "w", encoding="utf-8"))
            try:
                process = stack.enter_context(interrupt.child(
                    argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env, text=True,
                    errors="replace"))
            except OSError as exc:  # the log is removed: the block is left by an exception
                raise StepError(f"cannot start {argv[0]}: {exc.strerror}",
                                source=self.name) from None
            assert process.stdout is not None
            for line in process.stdout:
                line = shown(line.rstrip(), secrets)
                tail.append(line)
                log.write(line + "\n")
                print(f"[{self.name}] {line}", file=sys.stderr, flush=True)
        if process.returncode == 0:
            log_path.unlink()
            return
        raise CommandFailed(f"{what} failed (exit {process.returncode}): "
                            f"{failure_cause(tail)} (full log: {log_path})",
                            source=self.name, tail=tuple(tail), log=log_path)
