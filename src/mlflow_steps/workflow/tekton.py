"""Export a workflow to Tekton v1: a Pipeline, one Task per step, ConfigMaps/Secrets, a run.

Mapping (as FuseML's own Tekton backend did, plus what it lacked):
- string inputs → pipeline params; a codeset input → the ``codeset`` workspace plus params
  ``<input>-name`` / ``<input>-project``, written to ``.fuseml/_project`` / ``_org`` by a
  first task;
- step inputs → task params exposed as ``FUSEML_<NAME>``; outputs → task results
  (``TASK_RESULT`` names the last one); workflow outputs → pipeline results;
- ``{{ inputs.X }}`` → ``$(params.X)``, ``{{ steps.S.outputs.O }}`` → ``$(tasks.S.results.O)``;
- extensions → ConfigMaps and Secrets (:mod:`~mlflow_steps.workflow.tekton_objects`, which
  also keeps the object names unique); ``{{ extension.E.* }}`` → ``$(FUSEML_EXT_E_*)``;
- the builder step → its steps as :mod:`mlflow_steps.build.builder_plan` declares them
  (:mod:`~mlflow_steps.workflow.tekton_builder`).
Steps run in the listed order (``runAfter``), as in FuseML.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from mlflow_steps.build.builder_plan import DIRECT, EXECUTORS, is_builder_image
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.stepio import write_atomically
from mlflow_steps.image.platforms import DEFAULT_PLATFORMS, architecture, parse_platforms
from mlflow_steps.workflow.expressions import (
    ExtensionRef,
    InputRef,
    Ref,
    StepOutputRef,
    Template,
)
from mlflow_steps.workflow.extensions import ExtensionRegistry, Identity
from mlflow_steps.workflow.model import CODESET_TASK, GPU_RESOURCE, Step, Workflow, k8s_name
from mlflow_steps.workflow.plan import GLOBAL_ENV_PREFIX, RESULT_ENV, param_env_name
from mlflow_steps.workflow.tekton_builder import BuilderSecrets, render_builder
from mlflow_steps.workflow.tekton_objects import (
    PART_OF,
    PLACEHOLDER,
    ExtensionObjects,
    Names,
    ext_var,
)

API_VERSION = "tekton.dev/v1"
WORKSPACE = "codeset"
SHELL_IMAGE_PARAM = "shell-image"
ARCH_LABEL = "kubernetes.io/arch"  # the well-known node label a pod's nodeSelector names
DEFAULT_SHELL_IMAGE = "docker.io/library/busybox:1.36"
CODESET_SCRIPT = """#!/bin/sh
set -eu
mkdir -p "$(workspaces.codeset.path)/.fuseml"
printf '%s' "$CODESET_PROJECT" > "$(workspaces.codeset.path)/.fuseml/_org"
printf '%s' "$CODESET_NAME" > "$(workspaces.codeset.path)/.fuseml/_project"
"""


class _PlainDumper(yaml.SafeDumper):
    """Every value written out in full: no YAML anchors for the env the steps share."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


class TektonExport:
    """Builds the Kubernetes documents of one workflow (pure; ``write`` puts them in files)."""

    def __init__(self, workflow: Workflow, registry: ExtensionRegistry | None,
                 identity: Identity, executor: str = DIRECT) -> None:
        self.workflow = workflow
        self.name = k8s_name(workflow.name)
        self._names = Names(self.name)
        self.tasks = {step.name: k8s_name(step.name) for step in workflow.steps}
        self.extensions = ExtensionObjects(workflow, registry, identity, self._names)
        self.codeset = next((i.name for i in workflow.inputs if i.type == "codeset"), None)
        self.executor = None if executor == DIRECT else EXECUTORS[executor]

    def documents(self) -> dict[str, list[dict[str, Any]]]:
        """File name → documents."""
        files = {"pipeline.yaml": [self.pipeline()],
                 **{f"task-{self.tasks[s.name]}.yaml": [self.task(s)]
                    for s in self.workflow.steps},
                 "pipelinerun.yaml": [self.pipeline_run()]}
        extensions = self.extensions.documents()
        if extensions:
            files["extensions.yaml"] = extensions
        if any(self.is_builder(step) for step in self.workflow.steps):
            files["builder-secrets.yaml"] = self._builder_secrets().templates(self._meta)
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
        return self._names.meta(name)

    def _builder_secrets(self) -> BuilderSecrets:
        return BuilderSecrets(self._names("Secret", self.name, "registry"),
                              self._names("Secret", self.name, "pip-config"))

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

    def _image_architecture(self, step: Step) -> str | None:
        """The one architecture of ``step``'s image when its builder step builds for one
        platform only (its ``platform`` input: a literal or a workflow input's default; none
        given: linux/amd64); None for an index of several, or what only the run knows."""
        builder = self._image_builder(step)
        source = next((s for s in self.workflow.steps if s.name == builder), None)
        if source is None:
            return None
        value = next((p.value for p in source.params if p.name == "platform"), None)
        text = ",".join(DEFAULT_PLATFORMS) if value is None else value.literal
        if text is None and len(value.parts) == 1 and isinstance(value.parts[0], InputRef):
            text = self.workflow.input(value.parts[0].input).default  # the run's default
        if text is None:
            return None
        try:
            platforms = parse_platforms(text)
        except StepError as exc:
            raise StepError(f"{exc.detail}", source=self.workflow.source,
                            field=f"steps.{source.name}.inputs.platform") from None
        return architecture(platforms[0]) if len(platforms) == 1 else None

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
        envfrom = self.extensions.env_from(step)
        if envfrom:
            container["envFrom"] = envfrom
        spec: dict[str, Any] = {
            "params": [{"name": name, "type": "string"} for name, _ in self._task_params(step)],
            "results": [{"name": output} for output in step.outputs],
        }
        if step.gpus:
            container["computeResources"] = {"limits": {GPU_RESOURCE: str(step.gpus)}}
        if step.codeset:
            container["workingDir"] = step.codeset.path
            spec["workspaces"] = [{"name": WORKSPACE, "mountPath": step.codeset.path}]
        spec["steps"] = [container]
        if self.is_builder(step):
            render_builder(spec, container, self.executor, self._builder_secrets())
        return {"apiVersion": API_VERSION, "kind": "Task",
                "metadata": self._meta(self._task_name(step)), "spec": spec}

    def _task_name(self, step: Step) -> str:
        return self._names("Task", self.name, step.name)

    def _env(self, step: Step) -> dict[str, dict[str, Any]]:
        """Env in dependency order: extension values first, FuseML's own variables last."""
        refs = [ref for template in (step.image, *(p.value for p in step.params),
                                     *(v.value for v in step.env))
                for ref in template.refs if isinstance(ref, ExtensionRef)]
        env = self.extensions.env(step, refs)
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

    def pipeline_run(self) -> dict[str, Any]:
        params = []
        for item in self.workflow.inputs:
            names = [f"{item.name}-name", f"{item.name}-project"] if item.type == "codeset" \
                else [item.name]
            params += [{"name": name, "value": PLACEHOLDER if item.type == "codeset"
                        or item.default is None else item.default} for name in names]
        spec: dict[str, Any] = {"pipelineRef": {"name": self.name}, "params": params}
        # a step whose image has one architecture runs on a node of it (an index: any)
        pinned = [(self.tasks[step.name], arch) for step in self.workflow.steps
                  if (arch := self._image_architecture(step))]
        if pinned:
            spec["taskRunSpecs"] = [{"pipelineTaskName": name, "podTemplate": {
                "nodeSelector": {ARCH_LABEL: arch}}} for name, arch in pinned]
        if self.codeset:
            spec["workspaces"] = [{"name": WORKSPACE, "persistentVolumeClaim": {
                "claimName": k8s_name(self.name, "codeset")}}]
        return {"apiVersion": API_VERSION, "kind": "PipelineRun",
                "metadata": {"generateName": f"{self.name}-", "labels": {PART_OF: self.name}},
                "spec": spec}

