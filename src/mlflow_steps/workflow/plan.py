"""Pure resolution of a workflow run: input values, extension access, each step's env."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from mlflow_steps.core.errors import StepError
from mlflow_steps.workflow.expressions import ExtensionRef, InputRef, Ref, StepOutputRef
from mlflow_steps.workflow.extensions import (
    Access,
    ExtensionRegistry,
    Identity,
    resolve_steps,
)
from mlflow_steps.workflow.model import Step, Workflow

RESULT_ENV = "TASK_RESULT"
GLOBAL_ENV_PREFIX = "FUSEML_ENV_"
LOCAL_NAMESPACE = "local"


def param_env_name(name: str) -> str:
    """FuseML's env var for step input ``name``: ``FUSEML_`` + upper-cased, ``-`` → ``_``."""
    return "FUSEML_" + name.upper().replace("-", "_")


@dataclass(frozen=True)
class Codeset:
    """The codeset bound to the workflow's codeset input."""

    input: str
    name: str
    project: str


def bind_inputs(workflow: Workflow, given: dict[str, str], codeset: Codeset | None
                ) -> dict[str, str]:
    """Every string input's value: given, else its default; unknown or missing ones fail."""
    codeset_inputs = [item.name for item in workflow.inputs if item.type == "codeset"]
    for name in given:
        if name not in {item.name for item in workflow.inputs}:
            raise StepError(f"workflow {workflow.name!r} has no input {name!r}", field="--input")
        if name in codeset_inputs:
            raise StepError(f"{name!r} is a codeset input: give it with --codeset",
                            field="--input")
    if codeset_inputs and (codeset is None or len(codeset_inputs) != 1):
        raise StepError(f"workflow {workflow.name!r} has codeset inputs "
                        f"{', '.join(codeset_inputs)}: the runner binds --codeset to exactly one",
                        field="--codeset")
    values = {}
    for item in workflow.inputs:
        if item.type == "codeset":
            continue
        value = given.get(item.name, item.default)
        if value is None:
            raise StepError(f"input {item.name!r} has no default: pass --input "
                            f"{item.name}=VALUE", field="--input")
        values[item.name] = value
    return values


@dataclass
class RunPlan:
    """What steps see: inputs, the codeset, resolved extensions and earlier outputs."""

    workflow: Workflow
    inputs: dict[str, str]
    codeset: Codeset | None
    access: dict[tuple[str, str], Access]
    outputs: dict[str, dict[str, str]] = field(default_factory=dict)

    @classmethod
    def create(cls, workflow: Workflow, inputs: dict[str, str], codeset: Codeset | None,
               registry: ExtensionRegistry | None, identity: Identity) -> RunPlan:
        """Resolve every step's extension selectors up front, before anything runs."""
        return cls(workflow, inputs, codeset, resolve_steps(workflow, registry, identity))

    def secrets(self) -> set[str]:
        return {value for access in self.access.values() for value in access.secrets()}

    def value_of(self, step: Step) -> Callable[[Ref], str]:
        def value(ref: Ref) -> str:
            if isinstance(ref, InputRef):
                if ref.input in self.inputs:
                    return self.inputs[ref.input]
                assert self.codeset is not None
                return self.codeset.project if ref.attribute == "project" else self.codeset.name
            if isinstance(ref, StepOutputRef):
                return self.outputs[ref.step][ref.output]
            assert isinstance(ref, ExtensionRef)
            return self.access[step.name, ref.selector].attribute(ref.attribute, ref.key)

        return value

    def image(self, step: Step) -> str:
        image = step.image.render(self.value_of(step)).strip()
        if not image:
            raise step.where.error(f"step {step.name!r}: its image expression gave ''")
        return image

    def env(self, step: Step) -> dict[str, str]:
        """Extension configuration, then the step's ``env``, then FuseML's own variables."""
        value = self.value_of(step)
        env: dict[str, str] = {}
        for selector in step.extensions:
            env.update(self.access[step.name, selector.name].env())
        env.update({var.name: var.value.render(value) for var in step.env})
        env.update({param_env_name(p.name): p.value.render(value) for p in step.params})
        if step.outputs:
            env[RESULT_ENV] = step.outputs[-1]
        if step.codeset:
            env["FUSEML_CODESET_PATH"] = step.codeset.path
        env[f"{GLOBAL_ENV_PREFIX}WORKFLOW_NAME"] = self.workflow.name
        env[f"{GLOBAL_ENV_PREFIX}WORKFLOW_NAMESPACE"] = LOCAL_NAMESPACE
        return env
