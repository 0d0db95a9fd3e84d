"""The builder step in a Tekton Task: the steps :mod:`mlflow_steps.build.builder_plan`
declares (the engine-free builder's one step, or prepare → the executor → verify) rendered
as Tekton steps, the volumes they mount and the templates of the two Secrets they read."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlflow_steps.build.builder_plan import (
    AUTH_VOLUME,
    DIGEST_RESULT,
    PREPARE,
    SCRATCH_VOLUMES,
    SKIP_RESULT,
    Executor,
    PlanStep,
    direct_step,
    plan_steps,
)
from mlflow_steps.env.pip_secrets import TEKTON_SECRET_TEMPLATE

EXECUTOR_IMAGE_PARAM = "EXECUTOR_IMAGE"
DIRECT_DESCRIPTION = (
    "mlflow-steps builder, engine-free: one step as a non-root user, no capability, "
    "no privilege. Where it does not apply (conda packages, an sdist to compile, a "
    "system library the base lacks) it fails saying why: export with --builder "
    "kaniko or buildah for those codesets.")


@dataclass(frozen=True)
class BuilderSecrets:
    """The names of the builder's two optional Secrets: registry auth and the build's
    package configuration (pip.conf; condarc with a conda channel_alias)."""

    registry: str
    pip_config: str

    def templates(self, meta: Callable[[str], dict[str, Any]]) -> list[dict[str, Any]]:
        """Both Secrets to fill in (``meta``: an object's metadata), credentials included."""
        return [
            {"apiVersion": "v1", "kind": "Secret", "metadata": meta(self.registry),
             "type": "kubernetes.io/dockerconfigjson",
             "stringData": {".dockerconfigjson": '{"auths": {}}'}},
            {"apiVersion": "v1", "kind": "Secret", "metadata": meta(self.pip_config),
             "type": "Opaque", "stringData": dict(TEKTON_SECRET_TEMPLATE)},
        ]

    def volume(self, name: str) -> dict[str, Any]:
        """A volume the builder mounts: a scratch emptyDir or one of the Secrets."""
        if name in SCRATCH_VOLUMES:
            return {"name": name, "emptyDir": {}}
        if name == AUTH_VOLUME:
            return {"name": name, "secret": {
                "secretName": self.registry, "optional": True,
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}
        return {"name": name, "secret": {"secretName": self.pip_config, "optional": True}}


def render_builder(spec: dict[str, Any], container: dict[str, Any], executor: Executor | None,
                   secrets: BuilderSecrets) -> None:
    """Make the Task ``spec`` of a builder step (its one ``container``) the builder: the
    engine-free builder's one unprivileged step, or the plan around ``executor``."""
    steps = plan_steps(executor) if executor else (direct_step(),)
    if executor is None:
        spec["description"] = DIRECT_DESCRIPTION
    else:
        spec["description"] = (
            f"mlflow-steps builder plan: prepare → {executor.name} → verify. Needs Tekton "
            "Pipelines with step results and step `when` expressions (feature flags "
            "enable-step-actions, and enable-api-fields beta for array step results).")
        spec["params"].append({"name": EXECUTOR_IMAGE_PARAM, "type": "string",
                               "description": f"The {executor.name} executor image",
                               "default": executor.image})
    spec["results"].append({"name": DIGEST_RESULT,
                            "description": "Digest of the environment image"})
    volumes = dict.fromkeys(volume for step in steps for volume, _ in step.mounts)
    spec["volumes"] = [secrets.volume(name) for name in volumes]
    if executor is None:
        (direct,) = steps
        container["command"] = list(direct.command)
        container["args"] = list(direct.args)
        container["env"] = [*container["env"], *_env(direct)]
        container["volumeMounts"] = _mounts(direct)
        assert direct.user is not None
        container["securityContext"] = {
            "runAsUser": direct.user, "runAsGroup": direct.user, "runAsNonRoot": True,
            "privileged": False, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
        return
    spec["steps"] = [_plan_step(step, container) for step in steps]


def _env(step: PlanStep) -> list[dict[str, str]]:
    return [{"name": name, "value": value} for name, value in step.env]


def _mounts(step: PlanStep) -> list[dict[str, Any]]:
    """The step's volume mounts; the Secrets read-only."""
    return [{"name": volume, "mountPath": path}
            | ({} if volume in SCRATCH_VOLUMES else {"readOnly": True})
            for volume, path in step.mounts]


def _plan_step(plan_step: PlanStep, container: dict[str, Any]) -> dict[str, Any]:
    """One step of the plan: ours runs in the task's own container (its env, envFrom and
    working directory kept), the executor in its published image with least privilege."""
    step: dict[str, Any] = {"name": plan_step.name}
    if plan_step.image is None:
        step["image"] = container["image"]
        step["env"] = [*container["env"], *_env(plan_step)]
        for key in ("envFrom", "workingDir"):
            if key in container:
                step[key] = container[key]
    else:
        step["image"] = f"$(params.{EXECUTOR_IMAGE_PARAM})"
        step["securityContext"] = executor_security_context(plan_step.security_options)
    if plan_step.results:
        step["results"] = [{"name": n, "type": t} for n, t in plan_step.results]
    if plan_step.only_when_building:
        step["when"] = [{"input": f"$(steps.{PREPARE}.results.{SKIP_RESULT})",
                         "operator": "notin", "values": ["true"]}]
    step["command"] = list(plan_step.command)
    if plan_step.args:
        step["args"] = list(plan_step.args)
    step["volumeMounts"] = _mounts(plan_step)
    return step


def executor_security_context(security_options: tuple[str, ...]) -> dict[str, Any]:
    """An executor's least privilege as a Kubernetes securityContext: root in its own
    container (both executors need it), never privileged, plus the profiles it needs."""
    context: dict[str, Any] = {"runAsUser": 0, "privileged": False}
    for option in security_options:
        kind, _, value = option.partition("=")
        if value == "unconfined":
            key = {"seccomp": "seccompProfile", "apparmor": "appArmorProfile"}[kind]
            context[key] = {"type": "Unconfined"}
    return context
