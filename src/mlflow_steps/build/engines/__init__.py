"""Container build engines behind one interface, registered by name (imported on use)."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from mlflow_steps.core.errors import StepError

if TYPE_CHECKING:
    from mlflow_steps.build.engines.engine import Backend

# name → "module:class", in `auto` order
BACKENDS = {
    "direct": "mlflow_steps.build.direct.builder:DirectBackend",
    "docker": "mlflow_steps.build.engines.docker:DockerBackend",
    "buildah": "mlflow_steps.build.engines.buildah:BuildahBackend",
}
BUILDER_CHOICES = ("auto", *BACKENDS)
COMPRESSIONS = ("gzip", "zstd")  # the direct builder's layers (layers.py writes both)


def _backend(name: str, environ: dict[str, str]) -> Backend:
    module, attribute = BACKENDS[name].split(":")
    return getattr(importlib.import_module(module), attribute)(environ)


def select_backend(name: str, environ: dict[str, str], *, engines_only: bool = False
                   ) -> Backend:
    """The named backend, or for ``auto`` the first available: direct (no engine; when it
    does not apply the builder falls back), docker, then buildah (``engines_only``: the
    first engine).

    Kaniko is not a backend: it owns its container, so it runs as the `build` step of
    the builder plan (:mod:`mlflow_steps.build.builder_plan`).
    """
    if name != "auto":
        backend = _backend(name, environ)
        problem = backend.unavailable_reason()
        if problem:
            raise StepError(problem, source="input", field="builder")
        return backend
    reasons = []
    for candidate in BACKENDS:
        if engines_only and candidate == "direct":
            continue
        backend = _backend(candidate, environ)
        problem = backend.unavailable_reason()
        if not problem:
            return backend
        reasons.append(f"{backend.name}: {problem}")
    raise StepError("no build engine available (" + "; ".join(reasons) + ")", source="input",
                    field="builder")
