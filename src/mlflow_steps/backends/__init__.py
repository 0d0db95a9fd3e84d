"""Container build engines behind one interface, registered by name."""

from __future__ import annotations

from mlflow_steps.backends.base import Backend, BuildRequest
from mlflow_steps.backends.buildah import BuildahBackend
from mlflow_steps.backends.docker import DockerBackend
from mlflow_steps.errors import StepError

BACKENDS: dict[str, type[Backend]] = {
    "docker": DockerBackend,
    "buildah": BuildahBackend,
}
BUILDER_CHOICES = ("auto", *BACKENDS)


def select_backend(name: str, environ: dict[str, str]) -> Backend:
    """The named backend, or for ``auto`` the first available: docker, then buildah.

    Kaniko is not a backend: it owns its container, so it runs as the `build` step of
    the builder plan (:mod:`mlflow_steps.steps.builder_plan`).
    """
    if name != "auto":
        backend = BACKENDS[name](environ)
        problem = backend.unavailable_reason()
        if problem:
            raise StepError(problem, source="input", field="builder")
        return backend
    reasons = []
    for backend_class in BACKENDS.values():
        backend = backend_class(environ)
        problem = backend.unavailable_reason()
        if not problem:
            return backend
        reasons.append(f"{backend.name}: {problem}")
    raise StepError("no build engine available (" + "; ".join(reasons) + ")", source="input",
                    field="builder")


__all__ = ["BACKENDS", "BUILDER_CHOICES", "Backend", "BuildRequest", "select_backend"]
