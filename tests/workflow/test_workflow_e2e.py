"""The shipped workflows end to end on one machine: the builder and trainer images made here,
a real registry, an MLflow tracking server and an S3 artifact store found via extensions."""

from __future__ import annotations

import json
import os
import re
import shutil
import time
from pathlib import Path

import mlflow
import numpy as np
import pytest
from devservices import MlflowServer
from devstack import Registry
from support.helpers import EXAMPLE, IRIS_ROWS, REPO, predictions, run_cli
from support.image_checks import check_runtime_image

ACCESS_KEY = "wf-e2e-Access-7c1d"
SECRET_KEY = "wf-e2e-Secret-9f8e7d6c"
BUCKET = "wf-e2e"
EXTENSIONS = """
id: mlflow-e2e
product: mlflow
version: 3.1.0
zone: local
services:
  - id: mlflow-tracking
    resource: mlflow-tracking
    endpoints:
      - url: {tracking}
        type: internal
        configuration: {{MLFLOW_TRACKING_URI: "{tracking}"}}
  - id: mlflow-store
    resource: s3
    authrequired: true
    endpoints:
      - url: {s3}
        type: internal
        configuration: {{MLFLOW_S3_ENDPOINT_URL: "{s3}", AWS_DEFAULT_REGION: us-east-1}}
    credentials:
      - id: e2e
        scope: global
        configuration: {{AWS_ACCESS_KEY_ID: {access}, AWS_SECRET_ACCESS_KEY: {secret}}}
"""


@pytest.fixture(scope="module")
def tracking(stack_root, s3_server):
    s3_server.create_bucket(BUCKET)
    server = MlflowServer(stack_root / "mlflow-wf",
                          default_artifact_root=f"s3://{BUCKET}/mlflow").start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def fresh_registry(stack_root):
    """A registry of its own, so the first run of this module really builds."""
    registry = Registry(stack_root / "wf-registry").start()
    yield registry
    registry.stop()


@pytest.fixture(scope="module")
def workflow(tmp_path_factory, docker_engine, builder_image, base_image, fresh_registry,
             tracking, s3_server):
    """run(name, *extra, registry=…) → (completed process, outputs, run record, seconds)."""
    tmp = tmp_path_factory.mktemp("wf-e2e")
    extensions = tmp / "extensions.yaml"
    extensions.write_text(EXTENSIONS.format(tracking=tracking.url, s3=s3_server.endpoint_url,
                                            access=ACCESS_KEY, secret=SECRET_KEY))
    codeset = Path(shutil.copytree(EXAMPLE, tmp / "sklearn-logreg"))
    runs = tmp / "runs"
    env = {**os.environ, "DOCKER_HOST": docker_engine.host, "MLFLOW_STEPS_RUNS_DIR": str(runs)}

    def run(name: str, *extra: str, registry: Registry = fresh_registry, check: bool = True,
            codeset: Path = codeset):
        output = tmp / f"{name}.json"
        output.unlink(missing_ok=True)
        started = time.monotonic()
        result = run_cli("workflow", "run", str(REPO / "workflows" / f"{name}.yaml"),
                         "--codeset", str(codeset), "--extensions", str(extensions),
                         "--input", f"builder-image={builder_image}",
                         "--input", f"registry={registry.address}",
                         "--input", f"insecure-registries={registry.address}",
                         "--input", f"base-image={base_image}", "--output-json", str(output),
                         "--verbose", *extra, env=env, timeout=1500)
        seconds = time.monotonic() - started
        log = result.stdout + result.stderr
        assert result.returncode == 0 or not check, log[-4000:]
        for secret in (SECRET_KEY, ACCESS_KEY):
            assert secret not in log, "a credential reached the runner's output"
        assert not list(runs.glob("*/pip/*")), "the forwarded pip config outlived the step"
        assert not list(runs.glob("*/plan/*")), "the build plan (context, secrets) outlived it"
        listing = run_cli("workflow", "runs", "--json", env=env)
        record = json.loads(listing.stdout)[-1]
        assert SECRET_KEY not in listing.stdout and ACCESS_KEY not in listing.stdout
        outputs = json.loads(output.read_text()) if output.exists() else None
        return result, outputs, record, seconds

    return run


@pytest.fixture
def s3_client_env(monkeypatch, s3_server):
    for key, value in {**s3_server.client_env(), "AWS_ACCESS_KEY_ID": ACCESS_KEY,
                       "AWS_SECRET_ACCESS_KEY": SECRET_KEY}.items():
        monkeypatch.setenv(key, value)


@pytest.fixture(scope="module")
def first_train(workflow):
    """mlflow-train's first run into the module's empty registry: the one build of the
    example here; the e2e workflow then finds its image and skips the build."""
    return workflow("mlflow-train")


def test_train_workflow_builds_then_skips_and_logs_a_loadable_model(
        first_train, workflow, tracking, s3_client_env, capsys) -> None:
    first, outputs, record, first_seconds = first_train
    assert "[builder] done in " in first.stderr
    assert "[builder] [direct] pushed " in first.stderr  # auto: built with no engine
    assert "does not apply" not in first.stderr
    assert "[trainer] done in " in first.stderr
    builder, trainer = record["steps"]
    assert not builder["build_skipped"] and trainer["image"] == \
        builder["outputs"]["mlflow-runtime"]
    model_url = outputs["model-url"]
    assert model_url.startswith(f"s3://{BUCKET}/mlflow/") and "/models/m-" in model_url
    mlflow.set_tracking_uri(tracking.url)
    model = mlflow.pyfunc.load_model(model_url)
    assert list(model.predict(np.array(IRIS_ROWS))) == [0, 2]
    # the run's experiment: <project>.<codeset> (the plan tests log to this server too)
    logged = mlflow.get_logged_model(re.search(r"/models/(m-[0-9a-f]+)", model_url)[1])
    assert mlflow.get_experiment(logged.experiment_id).name == "local.sklearn-logreg"
    with capsys.disabled():
        print(f"\nmlflow-train: first run {first_seconds:.1f}s (builder "
              f"{builder['seconds']:.1f}s, trainer {trainer['seconds']:.1f}s)")


def test_e2e_workflow_serves_the_trained_model(first_train, workflow, docker_engine,
                                               serve_image) -> None:
    result, outputs, record, _ = workflow("mlflow-e2e", "--input", f"serve-image={serve_image}")
    # the second run of the builder (first_train's image): skipped, so shorter; the trainer
    # trains again: a new run, a new model
    assert "[builder] skipped build, done in " in result.stderr
    first_builder, first_trainer = first_train[2]["steps"]
    builder, trainer, _ = record["steps"]
    assert builder["build_skipped"] and builder["seconds"] < first_builder["seconds"]
    assert trainer["outputs"]["model-url"] != first_trainer["outputs"]["model-url"]
    assert "/models/m-" in trainer["outputs"]["model-url"]
    url = outputs["prediction-url"]
    try:
        assert "[server] done in " in result.stderr
        assert url.startswith("http://127.0.0.1:") and url.endswith("/invocations")
        assert predictions(url) == [0, 2]
        assert [step["status"] for step in record["steps"]] == ["succeeded"] * 3
    finally:
        docker_engine.cli("rm", "-f", "mlflow-serve-local-sklearn-logreg", check=False)


KANIKO_IMAGE = os.environ.get("MLFLOW_STEPS_KANIKO_IMAGE", "")


@pytest.fixture(scope="module")
def plan_registry(stack_root):
    """A registry of its own for the in-cluster plan, so each executor really builds."""
    registry = Registry(stack_root / "plan-registry").start()
    yield registry
    registry.stop()


def executor_images(docker_engine, registry) -> dict[str, str]:
    """Executor images this machine can run: Debian's buildah always, Kaniko when named."""
    from devstack import push_buildah_image

    images = {"buildah": push_buildah_image(docker_engine, registry)}
    if KANIKO_IMAGE:
        images["kaniko"] = KANIKO_IMAGE
    return images


# A small trainer (MLflow, pandas, boto3; a pyfunc model): the executors build it as they
# build the example, in a fraction of the time (Buildah's vfs copies the tree every layer).
SMALL_TRAINER = REPO / "tests" / "data" / "pyfunc-trainer"


def run_plan_train_workflow(workflow, docker_engine, registry, executor: str, image: str,
                            capsys) -> None:
    """The in-cluster plan run by the local runner: the executor builds and pushes, the
    image passes the shared runtime test, the trainer trains in it, and the second run
    skips without starting the executor."""
    extra = ("--builder", executor, "--executor-image", image)
    first, outputs, record, first_seconds = workflow("mlflow-train", *extra, registry=registry,
                                                     codeset=SMALL_TRAINER)
    assert f"[builder] build ({image})" in first.stderr
    assert "[builder] verify (" in first.stderr
    builder, trainer = record["steps"]
    reference = builder["outputs"]["mlflow-runtime"]
    assert reference.startswith(f"{registry.address}/mlflow/trainer:")
    labels = check_runtime_image(docker_engine, reference, imports=("pandas", "mlflow"),
                                 locked=("pandas", "mlflow-skinny"))
    assert labels["io.mlflow-steps.env-tag"] == reference.rsplit(":", 1)[1]
    assert "/models/m-" in outputs["model-url"] and trainer["status"] == "succeeded"

    again, _, record_again, second_seconds = workflow("mlflow-train", *extra, registry=registry,
                                                      codeset=SMALL_TRAINER)
    assert "[builder] build: not run (the plan skips it)" in again.stderr
    assert f"[builder] build ({image})" not in again.stderr
    assert record_again["steps"][0]["outputs"]["mlflow-runtime"] == reference
    with capsys.disabled():
        print(f"\n{executor} plan: first run {first_seconds:.1f}s (builder "
              f"{builder['seconds']:.1f}s), second run {second_seconds:.1f}s (builder "
              f"{record_again['steps'][0]['seconds']:.1f}s, executor not started)")


def test_buildah_in_a_container_builds_the_plan_and_trains(
        workflow, docker_engine, plan_registry, capsys) -> None:
    image = executor_images(docker_engine, plan_registry)["buildah"]
    run_plan_train_workflow(workflow, docker_engine, plan_registry, "buildah", image, capsys)


@pytest.mark.skipif(not KANIKO_IMAGE, reason="opt-in: MLFLOW_STEPS_KANIKO_IMAGE names a "
                    "Kaniko executor image the test engine can pull")
def test_kaniko_builds_the_plan_and_trains(workflow, docker_engine, stack_root,
                                           capsys) -> None:
    registry = Registry(stack_root / "kaniko-registry").start()
    try:
        run_plan_train_workflow(workflow, docker_engine, registry, "kaniko", KANIKO_IMAGE,
                                capsys)
    finally:
        registry.stop()


@pytest.mark.skipif(not KANIKO_IMAGE, reason="opt-in: MLFLOW_STEPS_KANIKO_IMAGE names a "
                    "Kaniko executor image the test engine can pull")
def test_kaniko_reproducible_plans_give_one_digest(workflow, stack_root) -> None:
    """Kaniko with --reproducible, twice, into two empty registries: one digest."""
    from mlflow_steps.image.client import RegistryClient

    digests = []
    for name in ("kaniko-repro-a", "kaniko-repro-b"):
        registry = Registry(stack_root / name).start()
        try:
            _, outputs, _, _ = workflow("mlflow-build", "--builder", "kaniko",
                                        "--executor-image", KANIKO_IMAGE, "--input",
                                        "reproducible=true", registry=registry)
            repository, tag = outputs["mlflow-runtime"].split("/", 1)[1].rsplit(":", 1)
            digests.append(RegistryClient(registry.address).manifest_digest(repository, tag))
        finally:
            registry.stop()
    assert digests[0] == digests[1], digests


def test_a_failing_executor_leaves_no_step_result(workflow, docker_engine, plan_registry,
                                                  tmp_path: Path) -> None:
    """Buildah fails on a requirement that does not exist: the run fails at the builder,
    no output is written, and the plan directory (context, secrets) is gone."""
    image = executor_images(docker_engine, plan_registry)["buildah"]
    bad = Path(shutil.copytree(EXAMPLE, tmp_path / "bad-codeset"))
    conda = bad / "conda.yaml"
    conda.write_text(conda.read_text().replace(
        "      - boto3\n", "      - mlflow-steps-no-such-package-xyz==9.9.9\n"))
    result, outputs, record, _ = workflow(
        "mlflow-build", "--builder", "buildah", "--executor-image", image,
        registry=plan_registry, check=False, codeset=bad)
    assert result.returncode != 0 and outputs is None
    last = result.stderr.strip().splitlines()[-1]  # the cause, then where the log is
    failed = re.fullmatch(r"mlflow-steps: error: steps\.builder: step 'builder' failed with "
                          r"exit code 1: (?P<cause>uv: No solution found .*"
                          r"mlflow-steps-no-such-package-xyz.*) \(full log: (?P<log>\S+)\)",
                          last)
    assert failed and len(failed["cause"]) <= 300, last
    log = Path(failed["log"]).read_text()
    assert "STEP 1/2: FROM" in log and SECRET_KEY not in log and ACCESS_KEY not in log
    assert "[builder] verify (" not in result.stderr
    [builder] = record["steps"]
    assert builder["status"] == "failed" and builder["outputs"] == {}
