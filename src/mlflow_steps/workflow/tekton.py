"""Export a workflow to Tekton v1: a Pipeline, one Task per step, ConfigMaps/Secrets, a run.

Mapping (as FuseML's own Tekton backend did, plus what it lacked):
- string inputs → pipeline params; a codeset input → the ``codeset`` workspace plus params
  ``<input>-name`` / ``<input>-project``, written to ``.fuseml/_project`` / ``_org`` by a
  first task;
- step inputs → task params exposed as ``FUSEML_<NAME>``; outputs → task results
  (``TASK_RESULT`` names the last one); workflow outputs → pipeline results;
- ``{{ inputs.X }}`` → ``$(params.X)``, ``{{ steps.S.outputs.O }}`` → ``$(tasks.S.results.O)``;
- extensions → a ConfigMap (endpoint url, version, zone, configuration) and a Secret
  (credential keys with placeholder values) per matched service, read through
  ``valueFrom``; ``{{ extension.E.* }}`` → ``$(FUSEML_EXT_E_*)``, expanded by Kubernetes
  from an env var defined earlier in the same container.
Steps run in the listed order (``runAfter``), as in FuseML.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from mlflow_steps.build.plan import (
    DIRECT,
    DIRECT_CACHE_MOUNT,
    DIRECT_ENV,
    DIRECT_USER,
    EXECUTORS,
    PIP_CONFIG_MOUNT,
    PLAN_MOUNT,
    PREPARE,
    REGISTRY_AUTH_MOUNT,
    SKIP_RESULT,
    Executor,
    is_builder_image,
    plan_steps,
)
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.stepio import write_atomically
from mlflow_steps.workflow.expressions import (
    ExtensionRef,
    InputRef,
    Ref,
    StepOutputRef,
    Template,
)
from mlflow_steps.workflow.extensions import (
    Access,
    ExtensionRegistry,
    Identity,
    resolve_steps,
)
from mlflow_steps.workflow.model import CODESET_TASK, Step, Workflow, k8s_name
from mlflow_steps.workflow.plan import GLOBAL_ENV_PREFIX, RESULT_ENV, param_env_name

API_VERSION = "tekton.dev/v1"
WORKSPACE = "codeset"
SHELL_IMAGE_PARAM = "shell-image"
DEFAULT_SHELL_IMAGE = "docker.io/library/busybox:1.36"
PLACEHOLDER = "REPLACE-ME"
PART_OF = "app.kubernetes.io/part-of"
CODESET_SCRIPT = """#!/bin/sh
set -eu
mkdir -p "$(workspaces.codeset.path)/.fuseml"
printf '%s' "$CODESET_PROJECT" > "$(workspaces.codeset.path)/.fuseml/_org"
printf '%s' "$CODESET_NAME" > "$(workspaces.codeset.path)/.fuseml/_project"
"""


def ext_var(ref: ExtensionRef) -> str:
    """The env var that carries one extension attribute inside the task's container."""
    return re.sub(r"[^A-Z0-9_]", "_", f"FUSEML_EXT_{ref.selector}_{ref.key or ref.attribute}"
                  .upper())


class _PlainDumper(yaml.SafeDumper):
    """Every value written out in full: no YAML anchors for the env the steps share."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


@dataclass(frozen=True)
class _Objects:
    """Per matched service: its ConfigMap and (when it has credentials) Secret."""

    config_map: str
    secret: str | None
    secret_keys: frozenset[str]

    def ref(self, key: str) -> dict[str, Any]:
        if self.secret and key in self.secret_keys:
            return {"secretKeyRef": {"name": self.secret, "key": key}}
        return {"configMapKeyRef": {"name": self.config_map, "key": key}}


class _Names:
    """The object names one export gives out, per kind: two different sources never share one
    (a name cut to 63 characters keeps a hash, but the hash is short and sanitizing merges)."""

    def __init__(self) -> None:
        self._given: dict[tuple[str, str], tuple[str, ...]] = {}

    def __call__(self, kind: str, *parts: str) -> str:
        name = k8s_name(*parts)
        other = self._given.setdefault((kind, name), parts)
        if other != parts:
            raise StepError(f"{'/'.join(other)!r} and {'/'.join(parts)!r} both become the "
                            f"{kind} {name!r}: rename one")
        return name


class TektonExport:
    """Builds the Kubernetes documents of one workflow (pure; ``write`` puts them in files)."""

    def __init__(self, workflow: Workflow, registry: ExtensionRegistry | None,
                 identity: Identity, executor: str = DIRECT) -> None:
        self.workflow = workflow
        self.name = k8s_name(workflow.name)
        self._names = _Names()
        self.tasks = {step.name: k8s_name(step.name) for step in workflow.steps}
        # Without a registry file, extensions are resolved in-cluster: one ConfigMap (and an
        # optional Secret) per selector, which the cluster's operator provides.
        self.in_cluster = registry is None
        self.access = {} if registry is None else resolve_steps(workflow, registry, identity)
        self.codeset = next((i.name for i in workflow.inputs if i.type == "codeset"), None)
        self.executor = None if executor == DIRECT else EXECUTORS[executor]

    def documents(self) -> dict[str, list[dict[str, Any]]]:
        """File name → documents."""
        files = {"pipeline.yaml": [self.pipeline()],
                 **{f"task-{self.tasks[s.name]}.yaml": [self.task(s)]
                    for s in self.workflow.steps},
                 "pipelinerun.yaml": [self.pipeline_run()]}
        extensions = self.extension_objects()
        if extensions:
            files["extensions.yaml"] = extensions
        if any(self.is_builder(step) for step in self.workflow.steps):
            files["builder-secrets.yaml"] = self.builder_secrets()
        return files

    def write(self, directory: Path) -> list[Path]:
        if directory.exists() and any(directory.iterdir()):
            raise StepError("output directory is not empty", source=str(directory))
        written = []
        for file, documents in self.documents().items():
            path = directory / file
            write_atomically(path, yaml.dump_all(documents, Dumper=_PlainDumper,
                                                 sort_keys=False))
            written.append(path)
        return written

    # -- expressions ---------------------------------------------------------------------

    def _text(self, template: Template) -> str:
        return template.render(self._pipeline_ref)

    def _pipeline_ref(self, ref: Ref) -> str:
        if isinstance(ref, InputRef):
            if self.workflow.input(ref.input).type == "codeset":
                return f"$(params.{ref.input}-{ref.attribute or 'name'})"
            return f"$(params.{ref.input})"
        if isinstance(ref, ExtensionRef):
            return f"$({ext_var(ref)})"
        return f"$(tasks.{self.tasks[ref.step]}.results.{ref.output})"

    # -- objects -------------------------------------------------------------------------

    def _meta(self, name: str) -> dict[str, Any]:
        return {"name": name, "labels": {PART_OF: self.name}}

    def in_cluster_objects(self, selector: str) -> str:
        """The ConfigMap (and optional Secret) name of an in-cluster extension selector."""
        self._names("Secret", self.name, "ext", selector)
        return self._names("ConfigMap", self.name, "ext", selector)

    def _service_objects(self, access: Access) -> _Objects:
        parts = (self.name, access.extension.id, access.service.id)
        keys = frozenset(access.secret_keys())
        return _Objects(self._names("ConfigMap", *parts),
                        self._names("Secret", *parts) if keys else None, keys)

    def extension_objects(self) -> list[dict[str, Any]]:
        if self.in_cluster:
            return self._in_cluster_templates()
        documents: dict[str, dict[str, Any]] = {}
        for access in self.access.values():
            objects = self._service_objects(access)
            env = access.env()
            data = {"url": access.endpoint.url, "version": access.extension.version,
                    "zone": access.extension.zone, **env}
            data = {k: v for k, v in data.items() if k not in objects.secret_keys}
            documents[f"ConfigMap/{objects.config_map}"] = {
                "apiVersion": "v1", "kind": "ConfigMap", "metadata": self._meta(
                    objects.config_map), "data": data}
            if objects.secret:
                documents[f"Secret/{objects.secret}"] = {
                    "apiVersion": "v1", "kind": "Secret", "metadata": self._meta(objects.secret),
                    "type": "Opaque",
                    "stringData": dict.fromkeys(sorted(objects.secret_keys), PLACEHOLDER)}
        return list(documents.values())

    def _in_cluster_templates(self) -> list[dict[str, Any]]:
        """A ConfigMap per selector to fill in: its keys become the step's env (as FuseML
        injects an extension's configuration); ``url``/``version``/``zone`` serve
        ``{{ extension.* }}`` expressions. Credentials go in the Secret of the same name."""
        selectors = dict.fromkeys(s.name for step in self.workflow.steps
                                  for s in step.extensions)
        return [{"apiVersion": "v1", "kind": "ConfigMap",
                 "metadata": {**self._meta(self.in_cluster_objects(name)), "annotations": {
                     "mlflow-steps/fill-in": "endpoint configuration (e.g. MLFLOW_TRACKING_URI);"
                     " credentials in the Secret of the same name (optional)"}},
                 "data": {"url": PLACEHOLDER}} for name in selectors]

    def builder_secrets(self) -> list[dict[str, Any]]:
        """Templates of the builder's two optional Secrets: registry auth and the build's
        package configuration (pip.conf; condarc with a conda channel_alias, credentials
        included)."""
        return [
            {"apiVersion": "v1", "kind": "Secret", "metadata": self._meta(self.registry_secret),
             "type": "kubernetes.io/dockerconfigjson",
             "stringData": {".dockerconfigjson": '{"auths": {}}'}},
            {"apiVersion": "v1", "kind": "Secret",
             "metadata": self._meta(self.pip_config_secret), "type": "Opaque",
             "stringData": {"pip.conf": "[global]\n",
                            "condarc": "# channel_alias: https://user:password@mirror.example/\n"}},
        ]

    @property
    def registry_secret(self) -> str:
        return self._names("Secret", self.name, "registry")

    @property
    def pip_config_secret(self) -> str:
        return self._names("Secret", self.name, "pip-config")

    def is_builder(self, step: Step) -> bool:
        """The builder step: its image, or the default of the input that names it."""
        image = step.image.literal
        if image is None and len(step.image.parts) == 1 and isinstance(
                step.image.parts[0], InputRef):
            image = self.workflow.input(step.image.parts[0].input).default
        return bool(image) and is_builder_image(image)

    def pipeline(self) -> dict[str, Any]:
        params: list[dict[str, Any]] = []
        for item in self.workflow.inputs:
            if item.type == "codeset":
                params += [{"name": f"{item.name}-{attr}", "type": "string",
                            "description": f"Codeset {item.name}: its {attr}"}
                           for attr in ("name", "project")]
                continue
            param: dict[str, Any] = {"name": item.name, "type": "string",
                                     "description": item.description}
            if item.default is not None:
                param["default"] = item.default
            params.append(param)
        tasks = [self._pipeline_task(step, index) for index, step in
                 enumerate(self.workflow.steps)]
        spec: dict[str, Any] = {"description": self.workflow.description, "params": params}
        if self.codeset:
            params.append({"name": SHELL_IMAGE_PARAM, "type": "string",
                           "description": "A small image with /bin/sh",
                           "default": DEFAULT_SHELL_IMAGE})
            spec["workspaces"] = [{"name": WORKSPACE, "description":
                                   "The codeset (an MLflow project checkout)"}]
            tasks.insert(0, self._codeset_task())
        spec["tasks"] = tasks
        spec["results"] = [
            {"name": output.name, "description": output.description,
             "value": self._text(Template((StepOutputRef(
                 self.workflow.producer(output.name).name, output.name),)))}
            for output in self.workflow.outputs]
        return {"apiVersion": API_VERSION, "kind": "Pipeline", "metadata": self._meta(self.name),
                "spec": spec}

    def _codeset_task(self) -> dict[str, Any]:
        return {
            "name": CODESET_TASK,
            "params": [{"name": "name", "value": f"$(params.{self.codeset}-name)"},
                       {"name": "project", "value": f"$(params.{self.codeset}-project)"},
                       {"name": "image", "value": f"$(params.{SHELL_IMAGE_PARAM})"}],
            "workspaces": [{"name": WORKSPACE, "workspace": WORKSPACE}],
            "taskSpec": {
                "params": [{"name": n, "type": "string"} for n in ("name", "project", "image")],
                "workspaces": [{"name": WORKSPACE}],
                "steps": [{"name": "write", "image": "$(params.image)",
                           "env": [{"name": "CODESET_NAME", "value": "$(params.name)"},
                                   {"name": "CODESET_PROJECT", "value": "$(params.project)"}],
                           "script": CODESET_SCRIPT}],
            },
        }

    def _image_builder(self, step: Step) -> str | None:
        """The builder step whose output is ``step``'s image, if it is one."""
        parts = step.image.parts
        if len(parts) == 1 and isinstance(parts[0], StepOutputRef):
            source = next((s for s in self.workflow.steps if s.name == parts[0].step), None)
            if source is not None and self.is_builder(source):
                return source.name
        return None

    def _task_params(self, step: Step) -> list[tuple[str, Template]]:
        """(task param, template) for every value the pipeline hands the task."""
        params = [(param.name, param.value) for param in step.params]
        if step.image.literal is None:
            params.append(("IMAGE", step.image))
        builder = self._image_builder(step)
        if builder:  # the digest the builder pushed: runs trace back to the exact image
            params.append(("IMAGE_DIGEST", Template((StepOutputRef(builder, "IMAGE_DIGEST"),))))
        params += [(f"env-{var.name}", var.value) for var in step.env
                   if var.value.literal is None]
        return params

    def _pipeline_task(self, step: Step, index: int) -> dict[str, Any]:
        previous = self.tasks[self.workflow.steps[index - 1].name] if index else (
            CODESET_TASK if self.codeset else None)
        task: dict[str, Any] = {"name": self.tasks[step.name],
                                "taskRef": {"name": self._task_name(step)}}
        if previous:
            task["runAfter"] = [previous]
        task["params"] = [{"name": name, "value": self._text(template)}
                          for name, template in self._task_params(step)]
        if step.codeset:
            task["workspaces"] = [{"name": WORKSPACE, "workspace": WORKSPACE}]
        return task

    def task(self, step: Step) -> dict[str, Any]:
        image = step.image.literal or "$(params.IMAGE)"
        env = [{"name": name, **value} for name, value in self._env(step).items()]
        # The image a run's models trace back to (the runtime tags runs with it).
        env.append({"name": "MLFLOW_STEPS_IMAGE", "value": image})
        if self._image_builder(step):
            env.append({"name": "MLFLOW_STEPS_IMAGE_DIGEST", "value": "$(params.IMAGE_DIGEST)"})
        container: dict[str, Any] = {"name": self.tasks[step.name], "image": image, "env": env}
        envfrom = self._env_from(step)
        if envfrom:
            container["envFrom"] = envfrom
        spec: dict[str, Any] = {
            "params": [{"name": name, "type": "string"} for name, _ in self._task_params(step)],
            "results": [{"name": output} for output in step.outputs],
        }
        if step.codeset:
            container["workingDir"] = step.codeset.path
            spec["workspaces"] = [{"name": WORKSPACE, "mountPath": step.codeset.path}]
        spec["steps"] = [container]
        if self.is_builder(step) and self.executor is None:
            self._direct_builder(spec, container)
        elif self.is_builder(step):
            self._builder_plan(spec, container)
        return {"apiVersion": API_VERSION, "kind": "Task",
                "metadata": self._meta(self._task_name(step)), "spec": spec}

    def _task_name(self, step: Step) -> str:
        return self._names("Task", self.name, step.name)

    def _builder_volumes(self) -> list[dict[str, Any]]:
        return [
            {"name": "registry-auth", "secret": {
                "secretName": self.registry_secret, "optional": True,
                "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}},
            {"name": "pip-config", "secret": {"secretName": self.pip_config_secret,
                                              "optional": True}},
        ]

    def _direct_builder(self, spec: dict[str, Any], container: dict[str, Any]) -> None:
        """The builder step as one unprivileged step: the engine-free builder."""
        spec["description"] = (
            "mlflow-steps builder, engine-free: one step as a non-root user, no capability, "
            "no privilege. Where it does not apply (conda packages, an sdist to compile, a "
            "system library the base lacks) it fails saying why: export with --builder "
            "kaniko or buildah for those codesets.")
        spec["results"].append({"name": "IMAGE_DIGEST",
                                "description": "Digest of the environment image"})
        spec["volumes"] = [{"name": "build-cache", "emptyDir": {}}, *self._builder_volumes()]
        container["command"] = ["mlflow-steps", "build"]
        container["args"] = ["--builder", DIRECT]
        container["env"] = [
            *container["env"],
            *({"name": key, "value": value} for key, value in DIRECT_ENV.items()),
            {"name": "DOCKER_CONFIG", "value": REGISTRY_AUTH_MOUNT},
            {"name": "TASK_RESULT_DIGEST", "value": "IMAGE_DIGEST"},
            {"name": "PIP_CONFIG_FILE", "value": f"{PIP_CONFIG_MOUNT}/pip.conf"}]
        container["volumeMounts"] = [
            {"name": "build-cache", "mountPath": DIRECT_CACHE_MOUNT},
            {"name": "registry-auth", "mountPath": REGISTRY_AUTH_MOUNT, "readOnly": True},
            {"name": "pip-config", "mountPath": PIP_CONFIG_MOUNT, "readOnly": True}]
        container["securityContext"] = {
            "runAsUser": DIRECT_USER, "runAsGroup": DIRECT_USER, "runAsNonRoot": True,
            "privileged": False, "allowPrivilegeEscalation": False,
            "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}

    def _builder_plan(self, spec: dict[str, Any], container: dict[str, Any]) -> None:
        """The builder step as prepare → build (the executor image) → verify."""
        executor = self.executor
        assert executor is not None
        spec["description"] = (
            f"mlflow-steps builder plan: prepare → {executor.name} → verify. Needs Tekton "
            "Pipelines with step results and step `when` expressions (feature flags "
            "enable-step-actions, and enable-api-fields beta for array step results).")
        spec["params"].append({"name": "EXECUTOR_IMAGE", "type": "string",
                               "description": f"The {executor.name} executor image",
                               "default": executor.image})
        spec["results"].append({"name": "IMAGE_DIGEST",
                                "description": "Digest of the environment image"})
        spec["volumes"] = [{"name": "build-plan", "emptyDir": {}}, *self._builder_volumes()]
        plan = {"name": "build-plan", "mountPath": PLAN_MOUNT}
        our_env = [*container["env"],
                   {"name": "DOCKER_CONFIG", "value": REGISTRY_AUTH_MOUNT},
                   {"name": "TASK_RESULT_DIGEST", "value": "IMAGE_DIGEST"}]
        our_mounts = [plan, {"name": "registry-auth", "mountPath": REGISTRY_AUTH_MOUNT,
                             "readOnly": True}]
        steps = []
        for plan_step in plan_steps(executor):
            step: dict[str, Any] = {"name": plan_step.name}
            if plan_step.image is None:
                step["image"] = container["image"]
                step_env, mounts = list(our_env), list(our_mounts)
                if plan_step.name == PREPARE:
                    step_env += [{"name": "PIP_CONFIG_FILE",
                                  "value": f"{PIP_CONFIG_MOUNT}/pip.conf"},
                                 {"name": "CONDARC", "value": f"{PIP_CONFIG_MOUNT}/condarc"}]
                    mounts.append({"name": "pip-config", "mountPath": PIP_CONFIG_MOUNT,
                                   "readOnly": True})
                step["env"] = step_env
                if "envFrom" in container:
                    step["envFrom"] = container["envFrom"]
                if "workingDir" in container:
                    step["workingDir"] = container["workingDir"]
            else:
                step["image"] = "$(params.EXECUTOR_IMAGE)"
                mounts = [plan, {"name": "registry-auth", "mountPath": executor.auth_mount,
                                 "readOnly": True}]
                step["securityContext"] = executor_security_context(executor)
            if plan_step.results:
                step["results"] = [{"name": n, "type": t} for n, t in plan_step.results]
            if plan_step.only_when_building:
                step["when"] = [{"input": f"$(steps.{PREPARE}.results.{SKIP_RESULT})",
                                 "operator": "notin", "values": ["true"]}]
            step["command"] = list(plan_step.command)
            if plan_step.args:
                step["args"] = list(plan_step.args)
            step["volumeMounts"] = mounts
            steps.append(step)
        spec["steps"] = steps

    def _env(self, step: Step) -> dict[str, dict[str, Any]]:
        """Env in dependency order: extension values first, FuseML's own variables last."""
        env: dict[str, dict[str, Any]] = {}
        refs = [ref for template in (step.image, *(p.value for p in step.params),
                                     *(v.value for v in step.env))
                for ref in template.refs if isinstance(ref, ExtensionRef)]
        for ref in refs:
            if self.in_cluster:
                env[ext_var(ref)] = {"value": f"$({ref.key})"} if ref.key else {
                    "valueFrom": {"configMapKeyRef": {
                        "name": self.in_cluster_objects(ref.selector), "key": ref.attribute}}}
                continue
            objects = self._service_objects(self.access[step.name, ref.selector])
            env[ext_var(ref)] = {"valueFrom": objects.ref(ref.key or ref.attribute)}
        for selector in step.extensions:
            if self.in_cluster:
                continue
            access = self.access[step.name, selector.name]
            objects = self._service_objects(access)
            env.update({key: {"valueFrom": objects.ref(key)} for key in access.env()})
        for var in step.env:
            env[var.name] = {"value": var.value.literal if var.value.literal is not None
                             else f"$(params.env-{var.name})"}
        env.update({param_env_name(p.name): {"value": f"$(params.{p.name})"}
                    for p in step.params})
        if step.outputs:
            env[RESULT_ENV] = {"value": step.outputs[-1]}
        if step.codeset:
            env["FUSEML_CODESET_PATH"] = {"value": step.codeset.path}
        env[f"{GLOBAL_ENV_PREFIX}WORKFLOW_NAME"] = {"value": self.workflow.name}
        env[f"{GLOBAL_ENV_PREFIX}WORKFLOW_NAMESPACE"] = {
            "value": "$(context.taskRun.namespace)"}
        return env

    def _env_from(self, step: Step) -> list[dict[str, Any]]:
        """In-cluster extensions: every key of the selector's ConfigMap and Secret."""
        if not self.in_cluster:
            return []
        names = dict.fromkeys(self.in_cluster_objects(s.name) for s in step.extensions)
        sources: list[dict[str, Any]] = []
        for name in names:
            sources += [{"configMapRef": {"name": name}},
                        {"secretRef": {"name": name, "optional": True}}]
        return sources

    def pipeline_run(self) -> dict[str, Any]:
        params = []
        for item in self.workflow.inputs:
            names = [f"{item.name}-name", f"{item.name}-project"] if item.type == "codeset" \
                else [item.name]
            params += [{"name": name, "value": PLACEHOLDER if item.type == "codeset"
                        or item.default is None else item.default} for name in names]
        spec: dict[str, Any] = {"pipelineRef": {"name": self.name}, "params": params}
        if self.codeset:
            spec["workspaces"] = [{"name": WORKSPACE, "persistentVolumeClaim": {
                "claimName": k8s_name(self.name, "codeset")}}]
        return {"apiVersion": API_VERSION, "kind": "PipelineRun",
                "metadata": {"generateName": f"{self.name}-", "labels": {PART_OF: self.name}},
                "spec": spec}


def executor_security_context(executor: Executor) -> dict[str, Any]:
    """The executor's least privilege as a Kubernetes securityContext: root in its own
    container (both executors need it), never privileged, plus the profiles it needs."""
    context: dict[str, Any] = {"runAsUser": 0, "privileged": False}
    for option in executor.security_options:
        kind, _, value = option.partition("=")
        if value == "unconfined":
            key = {"seccomp": "seccompProfile", "apparmor": "appArmorProfile"}[kind]
            context[key] = {"type": "Unconfined"}
    return context
