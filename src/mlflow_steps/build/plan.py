"""The builder as three steps: prepare (our image) → build (an unmodified executor image)
→ verify (our image).

Kaniko owns the container it runs in: it unpacks the base image over that container's root
filesystem and snapshots what changes. So our Python never shares a container with an
executor. ``prepare`` hashes the environment, checks the registry and, unless the tag
exists, renders the build context, the executor's arguments and the build-time secrets into
the plan directory (a volume the three steps share: an ``emptyDir`` in Tekton). ``build`` is
the published executor image, run only when the plan says so. ``verify`` checks the pushed
manifest and writes the step results, so a failed build leaves none.

One definition (:data:`EXECUTORS`, :func:`plan_steps`) serves the Tekton export and the
local runner, so in-cluster behaviour can be reproduced on one machine; the stages'
work is in :mod:`mlflow_steps.build.plan_stages`.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from mlflow_steps.core.errors import StepError
from mlflow_steps.image.reference import ImageRef

PLAN_MOUNT = "/mlflow-steps-build"
REGISTRY_AUTH_MOUNT = "/mlflow-steps-registry"
# Where a runner gives our image the build-time pip config (a file mount, never env values).
PIP_CONFIG_MOUNT = "/run/mlflow-steps/pip"
PLAN_FILE = "plan.json"
# The engine-free builder in-cluster: one step of our image, as a non-root user with no
# capability and no privilege (no executor); its caches on an emptyDir.
DIRECT = "direct"
DIRECT_USER = 1000
DIRECT_CACHE_MOUNT = "/mlflow-steps-cache"
DIRECT_ENV = {"HOME": DIRECT_CACHE_MOUNT, "MLFLOW_STEPS_CACHE": f"{DIRECT_CACHE_MOUNT}/steps",
              "UV_CACHE_DIR": f"{DIRECT_CACHE_MOUNT}/uv"}
STEP_RESULTS_DIR = "step-results"
PREPARE, BUILD, VERIFY = "prepare", "build", "verify"
SKIP_RESULT = "skip"
ARGS_RESULT = "executor-args"
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
    """One container of the plan; ``image`` None means the builder step's own image."""

    name: str
    image: str | None
    command: tuple[str, ...]
    args: tuple[str, ...] = ()
    results: tuple[tuple[str, str], ...] = ()
    only_when_building: bool = False
    step_inputs: bool = False  # gets the FuseML step's inputs (FUSEML_*, TASK_RESULT)


def step_result_path(name: str) -> str:
    """The Tekton variable for one of ``prepare``'s step results."""
    return f"$(step.results.{name}.path)"


def plan_steps(executor: Executor) -> tuple[PlanStep, ...]:
    """The builder's three steps for ``executor``."""
    return (
        PlanStep(PREPARE, None, ("mlflow-steps", "build"),
                 ("--stage", PREPARE, "--executor", executor.name, "--plan-dir", PLAN_MOUNT,
                  "--skip-result", step_result_path(SKIP_RESULT),
                  "--args-result", step_result_path(ARGS_RESULT)),
                 results=((SKIP_RESULT, "string"), (ARGS_RESULT, "array")), step_inputs=True),
        PlanStep(BUILD, executor.image, executor.command, executor.args,
                 only_when_building=True),
        PlanStep(VERIFY, None, ("mlflow-steps", "build"),
                 ("--stage", VERIFY, "--plan-dir", PLAN_MOUNT), step_inputs=True),
    )


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
