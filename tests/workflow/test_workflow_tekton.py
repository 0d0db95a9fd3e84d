"""Tekton export: Kubernetes objects validated, Tekton fields checked against Tekton v1.

Tekton's CRDs are not in kubernetes-validate, so Tekton objects are checked against the
field names of Tekton Pipelines' v1 API (tektoncd/pipeline, pkg/apis/pipeline/v1/
swagger.json: v1.Pipeline, PipelineSpec, PipelineTask, EmbeddedTask, ParamSpec, Param,
PipelineResult, PipelineWorkspaceDeclaration, WorkspacePipelineTaskBinding, TaskRef, Task,
TaskSpec, Step, TaskResult, WorkspaceDeclaration, PipelineRun, PipelineRunSpec,
PipelineRef, WorkspaceBinding). Step env and workingDir are Kubernetes container fields:
the steps are validated as containers of a Pod with kubernetes-validate.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml
from support.helpers import REPO, run_cli

from mlflow_steps.workflow.extensions import Identity, load_registry
from mlflow_steps.workflow.loader import load_workflow
from mlflow_steps.workflow.tekton import TektonExport

K8S_VERSION = "1.30.0"
EXTENSIONS = REPO / "workflows" / "extensions.example.yaml"
OBJECT = {"apiVersion", "kind", "metadata", "spec"}
METADATA = {"name", "generateName", "labels", "annotations", "namespace"}
PARAM_SPEC = {"name", "type", "description", "default", "enum", "properties"}
PARAM = {"name", "value"}
WORKSPACE_DECLARATION = {"name", "description", "mountPath", "readOnly", "optional"}
TEKTON_V1: dict[str, set[str]] = {
    "Pipeline.spec": {"description", "displayName", "params", "tasks", "finally", "results",
                      "workspaces"},
    "PipelineTask": {"name", "displayName", "description", "taskRef", "taskSpec", "when",
                     "runAfter", "retries", "params", "matrix", "workspaces", "timeout",
                     "pipelineRef", "pipelineSpec", "onError"},
    "EmbeddedTask": {"apiVersion", "kind", "spec", "metadata", "description", "displayName",
                     "params", "results", "sidecars", "stepTemplate", "steps", "volumes",
                     "workspaces"},
    "TaskRef": {"name", "kind", "apiVersion"},
    "PipelineResult": {"name", "type", "description", "value"},
    "PipelineWorkspaceDeclaration": {"name", "description", "optional"},
    "WorkspacePipelineTaskBinding": {"name", "workspace", "subPath"},
    "Task.spec": {"description", "displayName", "params", "results", "sidecars",
                  "stepTemplate", "steps", "volumes", "workspaces"},
    "TaskResult": {"name", "type", "description", "properties", "value"},
    "Step": {"name", "image", "command", "args", "workingDir", "env", "envFrom",
             "computeResources", "volumeMounts", "volumeDevices", "imagePullPolicy",
             "securityContext", "script", "timeout", "workspaces", "onError", "stdoutConfig",
             "stderrConfig", "params", "results", "ref", "when"},
    "PipelineRun.spec": {"pipelineRef", "pipelineSpec", "params", "status", "timeouts",
                         "taskRunTemplate", "workspaces", "taskRunSpecs"},
    "PipelineRef": {"name", "apiVersion"},
    "WorkspaceBinding": {"name", "subPath", "volumeClaimTemplate", "persistentVolumeClaim",
                         "emptyDir", "configMap", "secret", "projected", "csi"},
}


def keys_within(mapping: dict[str, Any], allowed: set[str], what: str) -> None:
    extra = set(mapping) - allowed
    assert not extra, f"{what}: not Tekton v1 fields: {sorted(extra)}"


def check_task_spec(spec: dict[str, Any], what: str, embedded: bool = False) -> None:
    keys_within(spec, TEKTON_V1["EmbeddedTask" if embedded else "Task.spec"], what)
    for param in spec.get("params", []):
        keys_within(param, PARAM_SPEC, f"{what}.params")
    for result in spec.get("results", []):
        keys_within(result, TEKTON_V1["TaskResult"], f"{what}.results")
    for workspace in spec.get("workspaces", []):
        keys_within(workspace, WORKSPACE_DECLARATION, f"{what}.workspaces")
    for step in spec["steps"]:
        keys_within(step, TEKTON_V1["Step"], f"{what}.steps")
    declared = {param["name"] for param in spec.get("params", [])}
    used = set(re.findall(r"\$\(params\.([^)]+)\)", yaml.safe_dump(spec["steps"])))
    assert used <= declared, f"{what}: undeclared params {used - declared}"


def check_pod(steps: list[dict[str, Any]], what: str,
              volumes: list[dict[str, Any]] | None = None) -> None:
    """Steps as Pod containers: env, valueFrom, workingDir are Kubernetes' own fields."""
    tekton_only = {"script", "results", "when", "onError", "timeout", "workspaces", "params",
                   "ref", "stdoutConfig", "stderrConfig"}
    containers = [{("resources" if k == "computeResources" else k): v
                   for k, v in step.items() if k not in tekton_only} for step in steps]
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "check"},
           "spec": {"containers": containers, "volumes": volumes or []}}
    kubernetes_validate.validate(pod, K8S_VERSION, strict=True)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict[str, list[dict[str, Any]]]:
    out = tmp_path_factory.mktemp("tekton") / "e2e"
    result = run_cli("workflow", "export", str(REPO / "workflows" / "mlflow-e2e.yaml"),
                     "--tekton", "-o", str(out), "--extensions", str(EXTENSIONS))
    assert result.returncode == 0, result.stderr
    return {path.name: list(yaml.safe_load_all(path.read_text())) for path in out.iterdir()}


def test_files_and_kinds(exported) -> None:
    kinds = {name: [doc["kind"] for doc in docs] for name, docs in exported.items()}
    assert kinds == {"pipeline.yaml": ["Pipeline"], "pipelinerun.yaml": ["PipelineRun"],
                     "task-builder.yaml": ["Task"], "task-trainer.yaml": ["Task"],
                     "task-server.yaml": ["Task"],
                     "extensions.yaml": ["ConfigMap", "ConfigMap", "Secret"],
                     "builder-secrets.yaml": ["Secret", "Secret"]}
    for docs in exported.values():
        for doc in docs:
            assert doc["apiVersion"] == ("v1" if doc["kind"] in ("ConfigMap", "Secret")
                                         else "tekton.dev/v1")
            keys_within(doc["metadata"], METADATA, f"{doc['kind']}.metadata")


def test_configmaps_and_secrets_are_valid_kubernetes(exported) -> None:
    for doc in exported["extensions.yaml"] + exported["builder-secrets.yaml"]:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    secret = exported["extensions.yaml"][2]
    assert secret["stringData"] == {"AWS_ACCESS_KEY_ID": "REPLACE-ME",
                                    "AWS_SECRET_ACCESS_KEY": "REPLACE-ME"}


def test_no_credential_value_is_exported(exported) -> None:
    text = yaml.safe_dump_all([doc for docs in exported.values() for doc in docs])
    for access in _accesses():
        for secret in access.secrets():
            assert secret not in text


def _accesses():
    registry = load_registry(EXTENSIONS)
    workflow = load_workflow(REPO / "workflows" / "mlflow-e2e.yaml")
    return [registry.resolve(s, Identity("local", "me")) for step in workflow.steps
            for s in step.extensions]


def test_pipeline_matches_tekton_v1(exported) -> None:
    pipeline = exported["pipeline.yaml"][0]
    keys_within(pipeline, OBJECT, "Pipeline")
    spec = pipeline["spec"]
    keys_within(spec, TEKTON_V1["Pipeline.spec"], "Pipeline.spec")
    for param in spec["params"]:
        keys_within(param, PARAM_SPEC, "Pipeline.params")
    for workspace in spec["workspaces"]:
        keys_within(workspace, TEKTON_V1["PipelineWorkspaceDeclaration"], "workspaces")
    for result in spec["results"]:
        keys_within(result, TEKTON_V1["PipelineResult"], "Pipeline.results")
    names = [task["name"] for task in spec["tasks"]]
    assert names == ["fuseml-codeset", "builder", "trainer", "server"]
    for previous, task in zip(names, spec["tasks"][1:], strict=False):
        assert task["runAfter"] == [previous]
    pipeline_params = {param["name"] for param in spec["params"]}
    for task in spec["tasks"]:
        keys_within(task, TEKTON_V1["PipelineTask"], f"tasks.{task['name']}")
        for param in task["params"]:
            keys_within(param, PARAM, f"tasks.{task['name']}.params")
            used = set(re.findall(r"\$\(params\.([^)]+)\)", param["value"]))
            assert used <= pipeline_params
        for binding in task.get("workspaces", []):
            keys_within(binding, TEKTON_V1["WorkspacePipelineTaskBinding"], "binding")
        if "taskRef" in task:
            keys_within(task["taskRef"], TEKTON_V1["TaskRef"], "taskRef")
        else:
            check_task_spec(task["taskSpec"], "fuseml-codeset", embedded=True)
            check_pod(task["taskSpec"]["steps"], "fuseml-codeset")
    assert spec["results"] == [{
        "name": "prediction-url",
        "description": "The URL that answers prediction requests (MLflow's /invocations).",
        "value": "$(tasks.server.results.prediction-url)"}]


def test_tasks_match_tekton_v1_and_results_line_up(exported) -> None:
    tasks = {doc["metadata"]["name"]: doc for name, docs in exported.items()
             if name.startswith("task-") for doc in docs}
    results = {name.removeprefix("mlflow-e2e-"): [r["name"] for r in task["spec"]["results"]]
               for name, task in tasks.items()}
    assert results == {"builder": ["mlflow-runtime", "IMAGE_DIGEST"], "trainer": ["model-url"],
                       "server": ["prediction-url"]}
    for name, task in tasks.items():
        keys_within(task, OBJECT, name)
        check_task_spec(task["spec"], name)
        pod_volumes = task["spec"].get("volumes", [])
        check_pod(task["spec"]["steps"], name, pod_volumes)
        assert task["spec"]["workspaces"] == [{"name": "codeset", "mountPath": "/project"}]
    pipeline_text = yaml.safe_dump(exported["pipeline.yaml"])
    for task, result in re.findall(r"\$\(tasks\.([^.]+)\.results\.([^)]+)\)", pipeline_text):
        assert result in results[task]


def test_trainer_env_reads_extensions_and_inputs(exported) -> None:
    trainer = exported["task-trainer.yaml"][0]["spec"]["steps"][0]
    env = {item["name"]: item for item in trainer["env"]}
    assert env["AWS_SECRET_ACCESS_KEY"]["valueFrom"] == {"secretKeyRef": {
        "name": "mlflow-e2e-mlflow-local-mlflow-store", "key": "AWS_SECRET_ACCESS_KEY"}}
    assert env["MLFLOW_TRACKING_URI"]["valueFrom"]["configMapKeyRef"]["key"] == \
        "MLFLOW_TRACKING_URI"
    assert env["FUSEML_MLFLOW_ENTRYPOINT"] == {"name": "FUSEML_MLFLOW_ENTRYPOINT",
                                               "value": "$(params.mlflow_entrypoint)"}
    assert env["TASK_RESULT"]["value"] == "model-url"
    assert trainer["image"] == "$(params.IMAGE)" and trainer["workingDir"] == "/project"
    # runs trace back to the image the builder pushed: its reference and its digest
    assert env["MLFLOW_STEPS_IMAGE"]["value"] == "$(params.IMAGE)"
    assert env["MLFLOW_STEPS_IMAGE_DIGEST"]["value"] == "$(params.IMAGE_DIGEST)"
    task = next(t for t in exported["pipeline.yaml"][0]["spec"]["tasks"]
                if t["name"] == "trainer")
    assert {"name": "IMAGE_DIGEST", "value": "$(tasks.builder.results.IMAGE_DIGEST)"} in \
        task["params"]


STORE_WORKFLOW = """name: wf
steps:
  - name: s
    image: img
    inputs:
      - name: endpoint
        value: 'url={{ extension.store.url }}'
    env:
      - name: KEY
        value: '{{ extension.store.cfg.AWS_SECRET_ACCESS_KEY }}'
    extensions:
      - name: store
        service_resource: s3
"""


def store_export(tmp_path: Path, registry) -> TektonExport:
    """One step reading an extension's url and a configuration key in expressions."""
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(STORE_WORKFLOW)
    return TektonExport(load_workflow(workflow), registry, Identity("local", "me"))


def test_extension_expressions_become_env_references(tmp_path: Path) -> None:
    export = store_export(tmp_path, load_registry(EXTENSIONS))
    task = export.task(export.workflow.steps[0])
    env = task["spec"]["steps"][0]["env"]
    names = [item["name"] for item in env]
    assert names.index("FUSEML_EXT_STORE_URL") < names.index("FUSEML_ENDPOINT")
    by_name = {item["name"]: item for item in env}
    assert by_name["FUSEML_EXT_STORE_AWS_SECRET_ACCESS_KEY"]["valueFrom"]["secretKeyRef"]
    pipeline_task = export.pipeline()["spec"]["tasks"][0]
    assert {"name": "endpoint", "value": "url=$(FUSEML_EXT_STORE_URL)"} in \
        pipeline_task["params"]
    assert {"name": "env-KEY", "value": "$(FUSEML_EXT_STORE_AWS_SECRET_ACCESS_KEY)"} in \
        pipeline_task["params"]


def test_pipeline_run_example(exported) -> None:
    run = exported["pipelinerun.yaml"][0]
    keys_within(run, OBJECT, "PipelineRun")
    keys_within(run["spec"], TEKTON_V1["PipelineRun.spec"], "PipelineRun.spec")
    keys_within(run["spec"]["pipelineRef"], TEKTON_V1["PipelineRef"], "pipelineRef")
    for binding in run["spec"]["workspaces"]:
        keys_within(binding, TEKTON_V1["WorkspaceBinding"], "workspaces")
    pipeline = exported["pipeline.yaml"][0]["spec"]
    required = {p["name"] for p in pipeline["params"] if "default" not in p}
    assert required <= {p["name"] for p in run["spec"]["params"]}


def test_export_needs_an_empty_directory(tmp_path: Path) -> None:
    train = str(REPO / "workflows" / "mlflow-train.yaml")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "x").write_text("")
    result = run_cli("workflow", "export", train, "--tekton", "-o", str(tmp_path / "b"),
                     "--extensions", str(EXTENSIONS))
    assert result.returncode == 2 and "not empty" in result.stderr
    build = run_cli("workflow", "export", str(REPO / "workflows" / "mlflow-build.yaml"),
                    "--tekton", "-o", str(tmp_path / "c"))
    assert build.returncode == 0 and not (tmp_path / "c" / "extensions.yaml").exists()


def test_export_without_extensions_file_resolves_them_in_cluster(tmp_path: Path) -> None:
    """No local extension records: each selector reads a ConfigMap (and an optional Secret)
    that the cluster provides; templates of the ConfigMaps are written alongside."""
    out = tmp_path / "out"
    result = run_cli("workflow", "export", str(REPO / "workflows" / "mlflow-train.yaml"),
                     "--tekton", "-o", str(out))
    assert result.returncode == 0, result.stderr
    trainer = yaml.safe_load((out / "task-trainer.yaml").read_text())["spec"]["steps"][0]
    assert trainer["envFrom"] == [
        {"configMapRef": {"name": "mlflow-train-ext-mlflow-tracking"}},
        {"secretRef": {"name": "mlflow-train-ext-mlflow-tracking", "optional": True}},
        {"configMapRef": {"name": "mlflow-train-ext-mlflow-store"}},
        {"secretRef": {"name": "mlflow-train-ext-mlflow-store", "optional": True}}]
    check_pod([trainer], "trainer")
    templates = list(yaml.safe_load_all((out / "extensions.yaml").read_text()))
    assert [t["metadata"]["name"] for t in templates] == [
        "mlflow-train-ext-mlflow-tracking", "mlflow-train-ext-mlflow-store"]
    for template in templates:
        kubernetes_validate.validate(template, K8S_VERSION, strict=True)


def test_expression_references_resolve_in_cluster(tmp_path: Path) -> None:
    export = store_export(tmp_path, None)
    env = {item["name"]: item for item in export.task(export.workflow.steps[0])["spec"]
           ["steps"][0]["env"]}
    assert env["FUSEML_EXT_STORE_URL"]["valueFrom"] == {"configMapKeyRef": {
        "name": "wf-ext-store", "key": "url"}}
    assert env["FUSEML_EXT_STORE_AWS_SECRET_ACCESS_KEY"] == {
        "name": "FUSEML_EXT_STORE_AWS_SECRET_ACCESS_KEY", "value": "$(AWS_SECRET_ACCESS_KEY)"}


def test_builder_is_one_unprivileged_step_by_default(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = run_cli("workflow", "export", str(REPO / "workflows" / "mlflow-build.yaml"),
                     "--tekton", "-o", str(out))
    assert result.returncode == 0, result.stderr
    spec = yaml.safe_load((out / "task-builder.yaml").read_text())["spec"]
    check_task_spec(spec, "builder")
    check_pod(spec["steps"], "builder", spec["volumes"])
    [step] = spec["steps"]
    assert step["image"] == "$(params.IMAGE)"
    assert step["command"] == ["mlflow-steps", "build"] and step["args"] == ["--builder",
                                                                             "direct"]
    context = step["securityContext"]
    assert context["runAsNonRoot"] is True and context["runAsUser"] == 1000
    assert context["privileged"] is False and context["allowPrivilegeEscalation"] is False
    assert context["capabilities"] == {"drop": ["ALL"]}
    env = {item["name"]: item.get("value") for item in step["env"]}
    assert env["TASK_RESULT_DIGEST"] == "IMAGE_DIGEST" and env["UV_CACHE_DIR"].startswith(
        "/mlflow-steps-cache/")
    assert {"name": "IMAGE_DIGEST", "description": "Digest of the environment image"} in \
        spec["results"]
    volumes = {volume["name"]: volume for volume in spec["volumes"]}
    assert volumes["build-cache"] == {"name": "build-cache", "emptyDir": {}}
    assert volumes["registry-auth"]["secret"]["optional"] is True


@pytest.mark.parametrize("executor", ["kaniko", "buildah"])
def test_builder_is_the_three_step_plan(tmp_path: Path, executor: str) -> None:
    out = tmp_path / "out"
    result = run_cli("workflow", "export", str(REPO / "workflows" / "mlflow-build.yaml"),
                     "--tekton", "-o", str(out), "--builder", executor)
    assert result.returncode == 0, result.stderr
    task = yaml.safe_load((out / "task-builder.yaml").read_text())
    spec = task["spec"]
    check_task_spec(spec, "builder")
    check_pod(spec["steps"], "builder", spec["volumes"])
    prepare, build, verify = spec["steps"]
    assert [prepare["name"], build["name"], verify["name"]] == ["prepare", "build", "verify"]
    assert prepare["image"] == verify["image"] == "$(params.IMAGE)"
    assert prepare["command"] == verify["command"] == ["mlflow-steps", "build"]
    assert prepare["results"] == [{"name": "skip", "type": "string"},
                                  {"name": "executor-args", "type": "array"}]
    # The executor: the published image, unmodified, run only when prepare says build.
    assert build["image"] == "$(params.EXECUTOR_IMAGE)"
    default = next(p["default"] for p in spec["params"] if p["name"] == "EXECUTOR_IMAGE")
    assert default == {"kaniko": "ghcr.io/osscontainertools/kaniko:v1.28.3",
                       "buildah": "quay.io/buildah/stable:v1.43.0"}[executor]
    assert build["when"] == [{"input": "$(steps.prepare.results.skip)", "operator": "notin",
                              "values": ["true"]}]
    assert "env" not in build and "mlflow-steps" not in build["command"]
    assert build["securityContext"]["privileged"] is False
    if executor == "kaniko":
        assert build["command"] == ["/kaniko/executor"]
        assert build["args"] == ["$(steps.prepare.results.executor-args[*])"]
        assert "seccompProfile" not in build["securityContext"]
    else:
        assert build["securityContext"]["seccompProfile"] == {"type": "Unconfined"}
    # Results only from verify; registry credentials only from the Secret, as a file.
    assert {e["name"]: e["value"] for e in verify["env"]}["TASK_RESULT"] == "mlflow-runtime"
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["registry-auth"]["secret"] == {
        "secretName": "mlflow-build-registry", "optional": True,
        "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}
    assert volumes["build-plan"] == {"name": "build-plan", "emptyDir": {}}
    for step in spec["steps"]:
        assert {"name": "build-plan", "mountPath": "/mlflow-steps-build"} in \
            step["volumeMounts"]
    secrets = list(yaml.safe_load_all((out / "builder-secrets.yaml").read_text()))
    assert secrets[0]["type"] == "kubernetes.io/dockerconfigjson"
    # pip and conda channel configuration (credentials included) reach prepare from a Secret.
    assert set(secrets[1]["stringData"]) == {"pip.conf", "condarc"}
    prepare_env = {e["name"]: e["value"] for e in prepare["env"]}
    assert prepare_env["CONDARC"] == "/run/mlflow-steps/pip/condarc"
    assert prepare_env["PIP_CONFIG_FILE"] == "/run/mlflow-steps/pip/pip.conf"
    assert "&id" not in (out / "task-builder.yaml").read_text()


def test_a_step_asking_for_gpus_limits_nvidia_gpu(tmp_path: Path) -> None:
    """`resources.limits["nvidia.com/gpu"]` becomes the step container's GPU limit (what the
    NVIDIA device plugin schedules on); steps that ask for none get no resources."""
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(GPU_WORKFLOW)
    export = TektonExport(load_workflow(workflow), None, Identity("local", "me"))
    tasks = {doc["metadata"]["name"]: doc for name, docs in export.documents().items()
             if name.startswith("task-") for doc in docs}
    [trainer] = tasks["wf-gpu-trainer"]["spec"]["steps"]
    assert trainer["computeResources"] == {"limits": {"nvidia.com/gpu": "1"}}
    # unset, the device plugin's toolkit mounts no libcuda (its default set is `utility`)
    assert {"name": "NVIDIA_DRIVER_CAPABILITIES", "value": "compute,utility"} in trainer["env"]
    [other] = tasks["wf-gpu-prepare"]["spec"]["steps"]
    assert "computeResources" not in other
    assert all(variable["name"] != "NVIDIA_DRIVER_CAPABILITIES" for variable in other["env"])
    own = tmp_path / "own.yaml"  # a workflow that sets the capabilities keeps its own
    own.write_text(GPU_WORKFLOW + "    env:\n      - name: NVIDIA_DRIVER_CAPABILITIES\n"
                                  "        value: all\n")
    [step] = [s for s in load_workflow(own).steps if s.gpus]
    assert [(v.name, v.value.literal) for v in step.env] == [("NVIDIA_DRIVER_CAPABILITIES",
                                                              "all")]
    for name, task in tasks.items():
        check_task_spec(task["spec"], name)
        check_pod(task["spec"]["steps"], name)


GPU_WORKFLOW = """name: wf-gpu
steps:
  - name: prepare
    image: img:1
    outputs:
      - name: data
  - name: trainer
    image: img:2
    inputs:
      - name: data
        value: '{{ steps.prepare.outputs.data }}'
    resources:
      limits:
        nvidia.com/gpu: 1
"""


PLATFORM_WORKFLOW = """name: wf-arch
inputs:
  - name: platform
    type: string
    default: {default}
steps:
  - name: builder
    image: 127.0.0.1:5055/mlflow-steps/builder:latest
    inputs:
      - name: platform
        value: {value}
    outputs:
      - name: image
  - name: trainer
    image: '{{{{ steps.builder.outputs.image }}}}'
  - name: other
    image: img:1
"""


@pytest.mark.parametrize(("value", "default", "selected"), [
    ("linux/arm64", "''", "arm64"),
    ("'{{ inputs.platform }}'", "linux/arm64/v8", "arm64"),
    ("linux/amd64", "''", "amd64"),
    ("'linux/amd64,linux/arm64'", "''", None),  # an index: any node
    ("'{{ inputs.platform }}'", "'linux/arm64,linux/amd64'", None),
])
def test_a_step_whose_image_has_one_architecture_runs_on_such_a_node(
        tmp_path: Path, value: str, default: str, selected: str | None) -> None:
    """The builder's platform input (a literal or the workflow input's default) decides:
    one platform pins the steps running its image to nodes of that architecture."""
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(PLATFORM_WORKFLOW.format(value=value, default=default))
    run = TektonExport(load_workflow(workflow), None, Identity("local", "me")).pipeline_run()
    keys_within(run["spec"], TEKTON_V1["PipelineRun.spec"], "PipelineRun.spec")
    if selected is None:
        assert "taskRunSpecs" not in run["spec"]
        return
    [spec] = run["spec"]["taskRunSpecs"]
    assert set(spec) == {"pipelineTaskName", "podTemplate"}
    assert spec["pipelineTaskName"] == "trainer"
    assert spec["podTemplate"] == {"nodeSelector": {"kubernetes.io/arch": selected}}


def test_a_builder_platform_the_export_cannot_read_is_one_line(tmp_path: Path) -> None:
    workflow = tmp_path / "wf.yaml"
    workflow.write_text(PLATFORM_WORKFLOW.format(value="linux/sparc", default="''"))
    result = run_cli("workflow", "export", str(workflow), "--tekton", "-o", str(tmp_path / "o"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].endswith(
        "steps.builder.inputs.platform: 'linux/sparc' is not a platform this builder targets "
        "(linux/amd64, linux/arm64)")
    assert not (tmp_path / "o").exists()
