"""A validated FuseML workflow: immutable, every string value pre-parsed into a Template."""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass

from mlflow_steps.core.errors import StepError
from mlflow_steps.workflow.expressions import Template
from mlflow_steps.workflow.nodes import Where

# The Tekton task that writes .fuseml/_org and _project before the steps run.
CODESET_TASK = "fuseml-codeset"


K8S_NAME_MAX = 63
_NAME_HASH_HEX = 10


def k8s_name(*parts: str) -> str:
    """A DNS-1123 label from ``parts`` (lower-cased, other characters → '-').

    A name longer than 63 characters keeps its first 52 and, after a '-', 10 hex digits of the
    SHA-256 of the whole name: two long names that share a beginning stay two names.
    """
    name = re.sub(r"[^a-z0-9-]+", "-", "-".join(parts).lower()).strip("-")
    if not name:
        raise StepError(f"cannot make a Kubernetes name from {'-'.join(parts)!r}")
    if len(name) <= K8S_NAME_MAX:
        return name
    digest = hashlib.sha256(name.encode()).hexdigest()[:_NAME_HASH_HEX]
    return f"{name[:K8S_NAME_MAX - _NAME_HASH_HEX - 1].rstrip('-')}-{digest}"


INPUT_TYPES = ("string", "codeset")
GPU_RESOURCE = "nvidia.com/gpu"  # the NVIDIA device plugin's resource name
DEFAULT_CODESET_PATH = "/project"
SELECTOR_FIELDS = ("extension_id", "service_id", "zone", "product", "version",
                   "service_category", "service_resource")


@dataclass(frozen=True)
class WorkflowInput:
    name: str
    type: str = "string"
    description: str = ""
    default: str | None = None


@dataclass(frozen=True)
class WorkflowOutput:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Param:
    """A step parameter input; the container gets it as ``FUSEML_<NAME>``."""

    name: str
    value: Template
    where: Where


@dataclass(frozen=True)
class CodesetMount:
    """The step's codeset input: which workflow input, mounted where (the working dir)."""

    input: str
    path: str
    name: str = ""


@dataclass(frozen=True)
class EnvVar:
    name: str
    value: Template
    where: Where


@dataclass(frozen=True)
class Selector:
    """An extension requirement: a name for expressions plus record-matching fields."""

    name: str
    fields: tuple[tuple[str, str], ...]
    where: Where

    def describe(self) -> str:
        criteria = ", ".join(f"{key}={value}" for key, value in self.fields) or "any"
        return f"{self.name} ({criteria})"

    def get(self, field: str) -> str:
        return dict(self.fields).get(field, "")


@dataclass(frozen=True)
class Step:
    name: str
    image: Template
    params: tuple[Param, ...]
    codeset: CodesetMount | None
    outputs: tuple[str, ...]
    env: tuple[EnvVar, ...]
    extensions: tuple[Selector, ...]
    where: Where
    gpus: int = 0  # resources.limits["nvidia.com/gpu"]: GPUs the step's container gets


@dataclass(frozen=True)
class Workflow:
    name: str
    description: str
    inputs: tuple[WorkflowInput, ...]
    outputs: tuple[WorkflowOutput, ...]
    steps: tuple[Step, ...]
    source: str

    def input(self, name: str) -> WorkflowInput:
        return next(item for item in self.inputs if item.name == name)

    def producer(self, output: str) -> Step:
        """The step whose output gives workflow output ``output`` (the last one declaring it)."""
        return [step for step in self.steps if output in step.outputs][-1]
