"""The local runner on a real Docker engine, with tiny step images (tests/data/workflows)."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
from support.helpers import EXAMPLE, run_cli

SECRET = "s3cr3t-Value-42"
PIP_INDEX = "https://mirror.example/simple"
ACCESS_KEY = "AKIA-test-9"
EXTENSIONS = f"""
id: store
product: minio
version: 1.0.0
services:
  - id: s3
    resource: s3
    authrequired: true
    endpoints:
      - url: http://127.0.0.1:9
        configuration: {{MLFLOW_S3_ENDPOINT_URL: "http://127.0.0.1:9"}}
    credentials:
      - id: default
        configuration: {{AWS_ACCESS_KEY_ID: {ACCESS_KEY}, AWS_SECRET_ACCESS_KEY: {SECRET}}}
"""
WORKFLOW = """name: wf-test
inputs:
  - name: code
    type: codeset
  - name: step-image
  - name: next-image
  - name: greeting
    default: hello
  - name: mode
    default: ok
  - name: mode2
    default: ok
outputs:
  - name: report-first
  - name: report-second
  - name: final
steps:
  - name: first
    image: '{{ inputs.step-image }}'
    inputs:
      - name: code
        codeset:
          name: '{{ inputs.code }}'
          path: /src
      - name: value
        value: '{{ inputs.next-image }}'
      - name: report
        value: report-first
      - name: greeting
        value: '{{ inputs.greeting }} {{ inputs.code.project }}/{{ inputs.code.name }}'
      - name: mode
        value: '{{ inputs.mode }}'
      - name: exit
        value: '7'
    outputs:
      - name: report-first
      - name: image
    env:
      - name: STORE_URL
        value: '{{ extension.store.url }}'
      - name: KEY_COPY
        value: 'key={{ extension.store.cfg.AWS_SECRET_ACCESS_KEY }}'
    extensions:
      - name: store
        service_resource: s3
  - name: second
    image: '{{ steps.first.outputs.image }}'
    inputs:
      - name: code
        codeset:
          name: '{{ inputs.code }}'
          path: /src
      - name: value
        value: 'after {{ steps.first.outputs.image }}'
      - name: report
        value: report-second
      - name: mode
        value: '{{ inputs.mode2 }}'
    outputs:
      - name: report-second
      - name: final
"""


@pytest.fixture
def run_workflow(tmp_path: Path, docker_engine, workflow_step_images):
    plain, socket = workflow_step_images
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "ext.yaml").write_text(EXTENSIONS)
    env = {**os.environ, "DOCKER_HOST": docker_engine.host,
           "MLFLOW_STEPS_RUNS_DIR": str(tmp_path / "runs"), "PIP_INDEX_URL": PIP_INDEX}

    def run(*extra: str):
        result = run_cli("workflow", "run", str(tmp_path / "wf.yaml"), "--codeset", str(EXAMPLE),
                         "--extensions", str(tmp_path / "ext.yaml"), "--input",
                         f"step-image={plain}", "--input", f"next-image={socket}",
                         "--output-json", str(tmp_path / "out.json"), *extra, env=env)
        leftovers = docker_engine.cli("ps", "-aq", "--filter", "label=org.mlflow-steps.run")
        assert leftovers.stdout.strip() == "", "step containers were not removed"
        assert SECRET not in result.stdout + result.stderr
        assert ACCESS_KEY not in result.stdout + result.stderr
        return result

    run.env = env
    run.tmp = tmp_path
    run.images = (plain, socket)
    return run


def records(run_workflow) -> list[dict]:
    result = run_cli("workflow", "runs", "--json", env=run_workflow.env)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def test_run_passes_inputs_codeset_extensions_and_outputs(run_workflow) -> None:
    plain, socket = run_workflow.images
    result = run_workflow("-v")
    assert result.returncode == 0, result.stderr
    outputs = json.loads((run_workflow.tmp / "out.json").read_text())
    assert outputs["final"] == f"after {socket}"
    assert f"final=after {socket}" in result.stdout.splitlines()
    first, second = json.loads(outputs["report-first"]), json.loads(outputs["report-second"])
    assert first["env"]["FUSEML_GREETING"] == "hello local/sklearn-logreg"
    assert first["env"]["FUSEML_VALUE"] == socket and first["env"]["TASK_RESULT"] == "image"
    assert first["env"]["FUSEML_ENV_WORKFLOW_NAME"] == "wf-test"
    assert first["env"]["STORE_URL"] == "http://127.0.0.1:9"
    assert first["env"]["KEY_COPY"] == "***"  # a credential-named variable: masked whole
    assert first["env"]["AWS_SECRET_ACCESS_KEY"] == "***"
    assert (first["cwd"], first["org"], first["project"]) == ("/src", "local", "sklearn-logreg")
    assert {"MLproject", "conda.yaml", "train.py", ".fuseml"} <= set(first["files"])
    assert not first["socket"] and "DOCKER_HOST" not in first["env"]
    assert second["socket"] and second["env"]["DOCKER_HOST"] == "unix:///var/run/docker.sock"
    assert "AWS_SECRET_ACCESS_KEY" not in second["env"]
    assert first["workspace_writable"] and second["workspace_writable"]
    assert first["pip"] is None and f"index-url = {PIP_INDEX}" in second["pip"]
    assert not list((run_workflow.tmp / "runs").glob("*/pip/*")), "pip config left behind"
    assert not (EXAMPLE / ".fuseml").exists()
    log = result.stderr
    assert f"[first] running ({plain})" in log and "[first] secret is ***" in log
    assert "[first] env AWS_SECRET_ACCESS_KEY=***" in log
    assert "[second] done in " in log
    [record] = records(run_workflow)
    assert record["status"] == "succeeded" and record["outputs"] == outputs
    assert [(s["name"], s["image"], s["exit_code"]) for s in record["steps"]] == [
        ("first", plain, 0), ("second", socket, 0)]
    assert record["inputs"]["step-image"] == plain
    listing = run_cli("workflow", "runs", env=run_workflow.env).stdout
    assert record["id"] in listing and "succeeded" in listing


def test_failed_step_stops_the_run_with_its_exit_code(run_workflow) -> None:
    result = run_workflow("--input", "mode=fail")
    assert result.returncode == 7
    assert "[first] failed (exit 7)" in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    failed = re.fullmatch(r"mlflow-steps: error: steps\.first: step 'first' failed with exit "
                          r"code 7: about to fail \(full log: (\S+/logs/first\.log)\)", last)
    assert failed, last
    assert Path(failed[1]).read_text().endswith("secret is ***\nabout to fail\n")
    assert result.stdout == "" and not (run_workflow.tmp / "out.json").exists()
    [record] = records(run_workflow)
    assert record["status"] == "failed" and record["outputs"] == {}
    assert [s["status"] for s in record["steps"]] == ["failed", "pending"]


def test_skipped_build_progress_and_a_missing_output(run_workflow) -> None:
    result = run_workflow("--input", "mode=skip", "--input", "mode2=nooutput")
    assert result.returncode == 1
    assert "[first] skipped build, done in " in result.stderr
    assert "step 'second' exited 0 but did not write its output 'report-second'" in \
        result.stderr
    assert not (run_workflow.tmp / "out.json").exists()
    [record] = records(run_workflow)
    assert record["steps"][0]["build_skipped"] and record["status"] == "failed"


def test_inputs_are_checked_before_anything_runs(run_workflow, tmp_path: Path) -> None:
    result = run_cli("workflow", "run", str(tmp_path / "wf.yaml"), "--codeset", str(EXAMPLE),
                     "--extensions", str(tmp_path / "ext.yaml"), env=run_workflow.env)
    assert result.returncode == 2 and "input 'step-image' has no default" in result.stderr
    result = run_cli("workflow", "run", str(tmp_path / "wf.yaml"), "--codeset", str(EXAMPLE),
                     "--input", "step-image=x", "--input", "next-image=y", env=run_workflow.env)
    assert result.returncode == 2 and "uses extension 'store'" in result.stderr
    assert records(run_workflow) == []


GPU_WORKFLOW = """name: wf-gpu
inputs:
  - name: step-image
steps:
  - name: trainer
    image: '{{ inputs.step-image }}'
    resources:
      limits:
        nvidia.com/gpu: 2
"""


def test_a_step_asking_for_gpus_gets_a_device_request(run_workflow, docker_engine,
                                                      tmp_path: Path) -> None:
    """The engine is asked for the GPUs (what `docker run --gpus 2` asks); this one has no
    GPU runtime and refuses, which the step's failure says in one line."""
    from mlflow_steps.workflow.engine import ContainerSpec

    spec = ContainerSpec("c", "img", {}, (), None, "host", gpus=2)
    [request] = spec.create_arguments()["device_requests"]
    assert (request["Count"], request["Capabilities"]) == (2, [["gpu"]])
    assert ContainerSpec("c", "img", {}, (), None, "host").create_arguments()[
        "device_requests"] is None

    (tmp_path / "gpu.yaml").write_text(GPU_WORKFLOW)
    plain, _ = run_workflow.images
    result = run_cli("workflow", "run", str(tmp_path / "gpu.yaml"), "--input",
                     f"step-image={plain}", env=run_workflow.env)
    assert result.returncode != 0 and result.stdout == ""
    last = result.stderr.strip().splitlines()[-1]
    assert "cannot start the container with 2 GPU(s): " in last and "gpu" in last.split(
        "GPU(s): ", 1)[1], last
    assert "Traceback" not in result.stderr
    leftovers = docker_engine.cli("ps", "-aq", "--filter", "label=org.mlflow-steps.run")
    assert leftovers.stdout.strip() == "", "the step container was not removed"
