"""The builder in-cluster, whole: the three-step plan prepare (our image) → build (an
unmodified executor image, Kaniko or Buildah) → verify (our image), and the engine-free
builder's single step.

Kaniko owns the container it runs in: it unpacks the base image over that container's root
filesystem and snapshots what changes, so our Python never shares a container with an
executor. ``prepare`` hashes the environment, checks the registry and, unless the tag
exists, renders the build context, the executor's arguments and the build-time secrets into
the plan directory (a volume the three steps share: an ``emptyDir`` in Tekton). ``build`` is
the published executor image, run only when the plan says so. ``verify`` checks the pushed
manifest and writes the step results, so a failed build leaves none.

Each step is declared here once (:func:`plan_steps`, :func:`direct_step`: image, command,
env, volumes, results, privilege); the Tekton export renders those declarations and the
local workflow runner runs them, so in-cluster behaviour can be reproduced on one machine.
The stages' own work is :func:`prepare` and :func:`verify`; the executors' arguments
:func:`kaniko_args` (Buildah's are the Buildah engine's).
"""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from mlflow_steps.build.step import (
    BuilderInputs,
    BuildOutcome,
    build_request,
    check_engine_platforms,
    existing_digest,
    log,
    pushed_digest,
    resolve_target,
)
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.stepio import write_atomically
from mlflow_steps.env.pip_secrets import (
    CONDARC_MOUNT_ENV,
    CONFIG_MOUNT,
    CONFIG_MOUNT_ENV,
    run_mounts,
    secret_arguments,
    write_secret_files,
)
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.credentials import docker_config_dir
from mlflow_steps.image.reference import ImageRef

if TYPE_CHECKING:
    from mlflow_steps.build.engines.engine import BuildRequest

PLAN_MOUNT = "/mlflow-steps-build"
REGISTRY_AUTH_MOUNT = "/mlflow-steps-registry"
PLAN_FILE = "plan.json"
SECRETS_DIR = "secrets"  # in the plan directory, from prepare until verify
# The engine-free builder in-cluster: one step of our image, as a non-root user with no
# capability and no privilege (no executor); its caches on an emptyDir.
DIRECT = "direct"
DIRECT_USER = 1000
DIRECT_CACHE_MOUNT = "/mlflow-steps-cache"
DIRECT_ENV = {"HOME": DIRECT_CACHE_MOUNT, "MLFLOW_STEPS_CACHE": f"{DIRECT_CACHE_MOUNT}/steps",
              "UV_CACHE_DIR": f"{DIRECT_CACHE_MOUNT}/uv"}
# The volumes the steps mount: two scratch directories (emptyDir) and two optional Secrets
# (registry auth as config.json; the build's package configuration, pip_secrets).
PLAN_VOLUME, CACHE_VOLUME = "build-plan", "build-cache"
AUTH_VOLUME, PIP_VOLUME = "registry-auth", "pip-config"
SCRATCH_VOLUMES = (PLAN_VOLUME, CACHE_VOLUME)
STEP_RESULTS_DIR = "step-results"
PREPARE, BUILD, VERIFY = "prepare", "build", "verify"
SKIP_RESULT = "skip"
ARGS_RESULT = "executor-args"
DIGEST_RESULT = "IMAGE_DIGEST"  # the builder's digest output (verify writes it)
# Works on any node filesystem (overlay needs fuse-overlayfs or a privileged container).
BUILDAH_STORAGE_DRIVER = "vfs"
BUILDAH_SCRIPT = f"""set -eu
cd {PLAN_MOUNT}
export CONTAINERS_REGISTRIES_CONF={PLAN_MOUNT}/registries.conf
set --; while IFS= read -r arg; do set -- "$@" "$arg"; done < build.args; buildah "$@"
set --; while IFS= read -r arg; do set -- "$@" "$arg"; done < push.args; buildah "$@"
"""


@dataclass(frozen=True)
class Executor:
    """A published executor image and how the `build` step runs it.

    ``security_options`` are the least privilege it builds with (Docker's
    ``--security-opt``; the matching securityContext profiles in Tekton).
    """

    name: str
    image: str
    command: tuple[str, ...]
    args: tuple[str, ...]
    auth_mount: str
    security_options: tuple[str, ...] = ()


EXECUTORS = {
    # No privilege beyond a root container: Kaniko builds in userspace.
    "kaniko": Executor(
        "kaniko", "ghcr.io/osscontainertools/kaniko:v1.28.3", ("/kaniko/executor",),
        (f"$(steps.{PREPARE}.results.{ARGS_RESULT}[*])",), auth_mount="/kaniko/.docker"),
    # vfs storage and chroot isolation, as root, with no added capability and not
    # privileged: buildah unshares namespaces for RUN steps, which the runtime's default
    # seccomp profile refuses (measured: "unshare(CLONE_NEWUSER): Operation not permitted"),
    # and so does a default AppArmor profile where nodes enforce one.
    "buildah": Executor(
        "buildah", "quay.io/buildah/stable:v1.43.0", ("/bin/sh", "-c", BUILDAH_SCRIPT), (),
        auth_mount=REGISTRY_AUTH_MOUNT,
        security_options=("seccomp=unconfined", "apparmor=unconfined")),
}
DEFAULT_EXECUTOR = "kaniko"


@dataclass(frozen=True)
class PlanStep:
    """One container of the builder; ``image`` None means the builder step's own image.

    ``env`` is added to the step's own; ``mounts`` are (volume, path), the Secrets read-only;
    ``user`` set: that non-root user with no capability (else root, for an executor).
    """

    name: str
    image: str | None
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()
    results: tuple[tuple[str, str], ...] = ()
    only_when_building: bool = False
    step_inputs: bool = False  # gets the FuseML step's inputs (FUSEML_*, TASK_RESULT)
    security_options: tuple[str, ...] = ()
    user: int | None = None


# What our own steps get: registry auth as DOCKER_CONFIG, the digest as a task result.
_OUR_ENV = (("DOCKER_CONFIG", REGISTRY_AUTH_MOUNT), ("TASK_RESULT_DIGEST", DIGEST_RESULT))
_PIP_ENV = tuple(CONFIG_MOUNT_ENV.items())
_AUTH = (AUTH_VOLUME, REGISTRY_AUTH_MOUNT)
_PIP = (PIP_VOLUME, CONFIG_MOUNT)
_PLAN = (PLAN_VOLUME, PLAN_MOUNT)


def step_result_path(name: str) -> str:
    """The Tekton variable for one of ``prepare``'s step results."""
    return f"$(step.results.{name}.path)"


def plan_steps(executor: Executor) -> tuple[PlanStep, ...]:
    """The builder's three steps for ``executor``: only ``prepare`` reads the package
    configuration, only the executor runs as root."""
    return (
        PlanStep(PREPARE, None, ("mlflow-steps", "build"),
                 ("--stage", PREPARE, "--executor", executor.name, "--plan-dir", PLAN_MOUNT,
                  "--skip-result", step_result_path(SKIP_RESULT),
                  "--args-result", step_result_path(ARGS_RESULT)),
                 env=(*_OUR_ENV, *_PIP_ENV, *CONDARC_MOUNT_ENV.items()),
                 mounts=(_PLAN, _AUTH, _PIP),
                 results=((SKIP_RESULT, "string"), (ARGS_RESULT, "array")), step_inputs=True),
        PlanStep(BUILD, executor.image, executor.command, executor.args,
                 mounts=(_PLAN, (AUTH_VOLUME, executor.auth_mount)), only_when_building=True,
                 security_options=executor.security_options),
        PlanStep(VERIFY, None, ("mlflow-steps", "build"),
                 ("--stage", VERIFY, "--plan-dir", PLAN_MOUNT), env=_OUR_ENV,
                 mounts=(_PLAN, _AUTH), step_inputs=True),
    )


def direct_step() -> PlanStep:
    """The engine-free builder as the one step of the builder: no executor, no privilege."""
    return PlanStep(DIRECT, None, ("mlflow-steps", "build"), ("--builder", DIRECT),
                    env=(*DIRECT_ENV.items(), *_OUR_ENV, *_PIP_ENV),
                    mounts=((CACHE_VOLUME, DIRECT_CACHE_MOUNT), _AUTH, _PIP),
                    step_inputs=True, user=DIRECT_USER)


@dataclass(frozen=True)
class PlanFile:
    """What ``prepare`` decided, for ``verify`` (no secrets)."""

    executor: str
    skip: bool
    destination: str
    pull_reference: str
    existing_digest: str | None
    insecure_registries: tuple[str, ...]
    registry_ca: str | None

    def write(self, plan_dir: Path) -> None:
        (plan_dir / PLAN_FILE).write_text(json.dumps(asdict(self), indent=1) + "\n")

    @classmethod
    def read(cls, plan_dir: Path) -> PlanFile:
        path = plan_dir / PLAN_FILE
        try:
            data = json.loads(path.read_text())
            data["insecure_registries"] = tuple(data["insecure_registries"])
            return cls(**data)
        except FileNotFoundError:
            raise StepError("no build plan here: run the prepare stage first",
                            source=str(path)) from None
        except (ValueError, TypeError, KeyError) as exc:
            raise StepError(f"unreadable build plan ({exc})", source=str(path)) from None


@dataclass(frozen=True)
class Decision:
    """What ``prepare`` decided and why: one line for people, a JSON object for scripts."""

    decision: str  # "skip" or "build"
    reference: str  # the image's tag in the registry pushed to
    reason: str  # "exists" (skip), "missing" or "forced" (the force input)
    digest: str | None  # the existing image's, when skipped
    executor: str
    strategy: str
    base: str

    def line(self) -> str:
        """``skip: REF exists (DIGEST)`` or ``build: REF missing, plan EXECUTOR (...)``."""
        if self.digest:
            return f"skip: {self.reference} {self.reason} ({self.digest})"
        return (f"build: {self.reference} {self.reason}, plan {self.executor} "
                f"({self.strategy}, base {self.base})")

    def json(self) -> str:
        """The decision as one JSON object (keys as the fields)."""
        return json.dumps(asdict(self))


def prepare(codeset: Path, inputs: BuilderInputs, executor_name: str, plan_dir: Path,
            environ: dict[str, str], skip_result: Path | None = None,
            args_result: Path | None = None) -> Decision:
    """Decide skip or build, and say why; for a build, write context, secrets and executor
    arguments."""
    if executor_name not in EXECUTORS:
        raise StepError(f"unknown executor (one of {', '.join(EXECUTORS)})", field="executor")
    if plan_dir.exists() and any(p.name != STEP_RESULTS_DIR for p in plan_dir.iterdir()):
        raise StepError("plan directory is not empty", source=str(plan_dir))
    check_engine_platforms(inputs, executor_name)
    plan_dir.mkdir(parents=True, exist_ok=True)
    target = resolve_target(codeset, inputs, environ)
    digest = existing_digest(target, inputs.force)
    ca_file = None
    if inputs.registry_ca:
        ca_file = plan_dir / "certs" / "ca.crt"
        ca_file.parent.mkdir()
        shutil.copyfile(inputs.registry_ca, ca_file)
    plan = PlanFile(executor_name, digest is not None, str(target.destination),
                    target.pull_reference, digest, inputs.insecure_registries,
                    str(ca_file) if ca_file else None)
    args: list[str] = []
    # The executor reads the secrets: kept unless this stage fails or is interrupted.
    with interrupt.scratch(plan_dir / SECRETS_DIR, keep=True) as secrets_dir:
        if digest is None:
            # Imported when building: the skip path loads no template or engine code.
            from mlflow_steps.build.dockerfile import write_context
            from mlflow_steps.build.image_plan import image_plan  # likewise: when building

            image = image_plan(target.spec)
            context = write_context(image, plan_dir / "context", run_mounts(target.pip),
                                    inputs.conda_channel_alias, environ)
            secrets = write_secret_files(secrets_dir, target.pip)
            request = build_request(target, image, inputs, context, docker_config_dir(environ),
                                    secrets)
            if executor_name == "kaniko" and inputs.reproducible is None:
                # Kaniko's --reproducible re-tars every layer (1.64x the build+push): on ask
                request = replace(request, source_date_epoch=None)
            args = _executor_args(executor_name, request, plan_dir, ca_file)
        plan.write(plan_dir)
        for path, value in ((skip_result, "true" if plan.skip else "false"),
                            (args_result, json.dumps(args))):
            if path is not None:
                write_atomically(path, value)
    reason = "exists" if digest else "forced" if inputs.force else "missing"
    return Decision("skip" if digest else "build", str(target.destination), reason, digest,
                    executor_name, target.spec.strategy, target.spec.base_image)


def _executor_args(executor: str, request: BuildRequest, plan_dir: Path,
                   ca_file: Path | None) -> list[str]:
    """Kaniko's arguments (a step result); Buildah's written to build.args and push.args."""
    from mlflow_steps.build.engines.buildah import buildah_args, registries_conf  # building

    digest_file = plan_dir / "digest"
    if executor == "kaniko":
        return kaniko_args(request, digest_file, ca_file)
    (plan_dir / "registries.conf").write_text(registries_conf(request))
    build, push = buildah_args(request, digest_file, ca_file.parent if ca_file else None)
    for name, words in (("build.args", build), ("push.args", push)):
        words = [f"--storage-driver={BUILDAH_STORAGE_DRIVER}", *words]
        if any("\n" in word for word in words):
            raise StepError("a build argument contains a newline", field=name)
        (plan_dir / name).write_text("".join(f"{word}\n" for word in words))
    return []


def kaniko_args(request: BuildRequest, digest_file: Path, ca_file: Path | None) -> list[str]:
    """The Kaniko executor's arguments for ``request`` (paths as its container sees them)."""
    from mlflow_steps.build.engines.engine import PUSH_ATTEMPTS  # building: not the skip path

    argv = [
        f"--context=dir://{request.context}",
        f"--dockerfile={request.context / 'Dockerfile'}",
        f"--destination={request.destination}",
        f"--digest-file={digest_file}",
        f"--compressed-caching={'true' if request.compressed_caching else 'false'}",
        f"--push-retry={PUSH_ATTEMPTS - 1}",
    ]
    argv += secret_arguments(request.secrets, joined=True)
    argv += [f"--label={key}={value}" for key, value in sorted(request.labels.items())]
    if request.cache or request.cache_repo:
        argv.append("--cache=true")
    if request.cache_repo:
        argv.append(f"--cache-repo={request.cache_repo}")
    if request.reproducible:
        argv.append("--reproducible")
    insecure = (ref.registry for ref in (request.destination, request.base_image)
                if request.insecure(ref))
    argv += [f"--insecure-registry={host}" for host in dict.fromkeys(insecure)]
    if ca_file:
        argv.append(f"--registry-certificate={request.destination.registry}={ca_file}")
    argv.append(f"--verbosity={'debug' if request.verbose else 'info'}")
    return argv


def verify(plan_dir: Path, environ: dict[str, str]) -> BuildOutcome:
    """Check the pushed (or existing) manifest; the build-time secrets are removed first."""
    plan = PlanFile.read(plan_dir)
    shutil.rmtree(plan_dir / SECRETS_DIR, ignore_errors=True)
    destination = ImageRef.parse(plan.destination)
    client = RegistryClient(destination.registry,
                            insecure_registries=plan.insecure_registries,
                            verify=plan.registry_ca or True, environ=environ)
    if plan.skip:
        digest = client.manifest_digest(destination.repository, destination.tag)
        if digest != plan.existing_digest:
            raise StepError(f"{destination} changed or vanished since prepare "
                            f"({plan.existing_digest} → {digest})", source="verify")
        return BuildOutcome(plan.pull_reference, digest or "", built=False, backend=None)
    digest = pushed_digest(client, destination, plan.executor)
    reported = plan_dir / "digest"
    if reported.is_file() and reported.read_text().strip() != digest:
        log(f"note: {plan.executor} pushed {reported.read_text().strip()}, the registry now "
            f"serves {digest} (another builder pushed the same tag)")
    return BuildOutcome(plan.pull_reference, digest, built=True, backend=plan.executor)


# -- workflows: which step is the builder, and running the plan's steps locally -----------

BUILDER_REPOSITORIES = ("mlflow-steps/builder", "fuseml/mlflow-builder")
_STEP_RESULT = re.compile(r"\$\(steps\.(?P<step>[a-z0-9-]+)\.results\.(?P<name>[a-z0-9-]+)"
                          r"(?P<star>\[\*\])?\)")
_RESULT_PATH = re.compile(r"\$\(step\.results\.(?P<name>[a-z0-9-]+)\.path\)")


def is_builder_image(reference: str) -> bool:
    """Whether a workflow step's image is the builder (ours, or FuseML's by name)."""
    return ImageRef.parse(reference).repository.endswith(BUILDER_REPOSITORIES)


def local_step_results(plan_dir: Path) -> Path:
    """Where a local run keeps ``prepare``'s step results (inside the plan directory)."""
    return plan_dir / STEP_RESULTS_DIR


def substitute(words: tuple[str, ...], results_dir: Path, plan_dir_in_container: str
               ) -> list[str]:
    """Tekton's step-result variables in ``words``, resolved as a local run does.

    ``$(step.results.X.path)`` is a file under the plan directory; ``$(steps.S.results.X)``
    its content; ``$(steps.S.results.X[*])`` (a whole array result) expands to its items.
    """
    resolved: list[str] = []
    for word in words:
        word = _RESULT_PATH.sub(
            lambda m: f"{plan_dir_in_container}/{STEP_RESULTS_DIR}/{m['name']}", word)
        match = _STEP_RESULT.fullmatch(word)
        if match and match["star"]:
            items = json.loads((results_dir / match["name"]).read_text())
            resolved += [str(item) for item in items]
            continue
        resolved.append(_STEP_RESULT.sub(
            lambda m: (results_dir / m["name"]).read_text().strip(), word))
    return resolved
