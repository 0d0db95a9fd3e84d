"""The runtime step against real tracking stores: an `mlflow server`, sqlite, S3 (moto)."""

from __future__ import annotations

import os
from pathlib import Path

import mlflow
import numpy as np
import pytest
from support.helpers import run_cli
from support.runtime_env import example, results, scripted, step_env

SECRET = "tok-" + os.urandom(8).hex()


def predicts(model_uri: str) -> None:
    prediction = mlflow.pyfunc.load_model(model_uri).predict(
        np.array([[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]))
    assert list(prediction) == [0, 2]


# Where the step runs, what its image is: `trace` finds these on the run and its model.
TRACE = {"MLFLOW_STEPS_ENV_TAG": "0123456789abcdef0123456789abcdef",
         "MLFLOW_STEPS_IMAGE": "reg.example:5000/mlflow/trainer:0123456789abcdef",
         "MLFLOW_STEPS_IMAGE_DIGEST": "sha256:" + "ab" * 32}
# The example's `log_model` infers its pip requirements in a child Python (~5 s a run);
# without it MLflow logs its fallback list. What the step does with the model is the same.
NO_INFERENCE = {"MLFLOW_REQUIREMENTS_INFERENCE_TIMEOUT": "0"}


def test_run_logs_model_and_outputs_its_url(mlflow_server, tmp_path: Path) -> None:
    """... and the run and its model trace back to the image (one training run pays for
    both)."""
    env = step_env(tmp_path, mlflow_server.url, FUSEML_MLFLOW_ENTRYPOINT_ARGS="C=0.5,max_iter=150",
                   MLFLOW_TRACKING_TOKEN=SECRET, FUSEML_VERBOSE="true", **TRACE,
                   **NO_INFERENCE)
    result = run_cli("run", str(example(tmp_path)), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = results(tmp_path)
    url = result.stdout.strip()
    assert outputs["model-url"] == url
    assert "/models/m-" in url and url.endswith("/artifacts")
    assert outputs["model-uri"].startswith("models:/m-")
    assert SECRET not in result.stdout + result.stderr
    assert "accuracy=" in result.stderr + result.stdout  # the project's own output, live

    client = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url)
    run = client.get_run(outputs["run-id"])
    assert run.info.status == "FINISHED"
    assert run.data.params == {"C": "0.5", "max_iter": "150"}
    assert client.get_experiment(run.info.experiment_id).name == "sklearn-logreg"
    mlflow.set_tracking_uri(mlflow_server.url)
    predicts(url)
    predicts(outputs["model-uri"])
    traces_back_to_the_image(client, outputs, step_env(tmp_path, mlflow_server.url))


def traces_back_to_the_image(client: mlflow.MlflowClient, outputs: dict[str, str],
                             env: dict[str, str]) -> None:
    """The image's env tag and the workflow's image reference/digest are on the run and on
    the model it logged, with the tooling version; `trace` reads them back."""
    from mlflow_steps import __version__

    expected = {"mlflow_steps.env_tag": TRACE["MLFLOW_STEPS_ENV_TAG"],
                "mlflow_steps.image": TRACE["MLFLOW_STEPS_IMAGE"],
                "mlflow_steps.image_digest": TRACE["MLFLOW_STEPS_IMAGE_DIGEST"],
                "mlflow_steps.tooling_version": __version__}
    run_tags = client.get_run(outputs["run-id"]).data.tags
    assert {key: run_tags.get(key) for key in expected} == expected
    model = client.get_logged_model(outputs["model-uri"].removeprefix("models:/"))
    assert {key: model.tags.get(key) for key in expected} == expected
    for uri in (outputs["model-uri"], f"runs:/{outputs['run-id']}/model"):
        traced = run_cli("trace", uri, "--no-lock", env=env)
        assert traced.returncode == 0, traced.stderr
        fields = {line[:10].strip(): line[11:] for line in traced.stdout.splitlines()}
        assert fields["run"] == outputs["run-id"]
        assert fields["env tag"] == TRACE["MLFLOW_STEPS_ENV_TAG"]
        assert fields["image"] == ("reg.example:5000/mlflow/trainer@"  # one pullable line
                                   + TRACE["MLFLOW_STEPS_IMAGE_DIGEST"])
        assert "digest" not in fields
    untraced = client.create_logged_model(model.experiment_id, name="elsewhere")
    for uri, words in ((f"models:/{untraced.model_id}", "carries no mlflow-steps trace"),
                       ("s3://bucket/model", "not a model URI"),
                       ("models:/m-0123456789abcdef0123456789abcdef", "models:/m-")):
        refused = run_cli("trace", uri, env=env)
        assert refused.returncode == 2 and len(refused.stderr.splitlines()) == 1, refused.stderr
        assert words in refused.stderr


def test_registration_alias_tags_description(mlflow_server, tmp_path: Path) -> None:
    env = step_env(tmp_path, mlflow_server.url, FUSEML_MLFLOW_REGISTER_MODEL="iris-logreg",
                   FUSEML_MLFLOW_MODEL_ALIAS="champion",
                   FUSEML_MLFLOW_MODEL_TAGS="team=ml,stage='first try'",
                   FUSEML_MLFLOW_MODEL_DESCRIPTION="logistic regression on iris", **NO_INFERENCE)
    result = run_cli("run", str(example(tmp_path)), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert results(tmp_path)["model-uri"] == "models:/iris-logreg@champion"
    client = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url)
    version = client.get_model_version_by_alias("iris-logreg", "champion")
    assert version.tags == {"team": "ml", "stage": "first try"}
    assert version.description == "logistic regression on iris"
    assert version.run_id == results(tmp_path)["run-id"]
    mlflow.set_tracking_uri(mlflow_server.url)
    predicts("models:/iris-logreg@champion")


def test_fuseml_experiment_name_and_deleted_experiment(mlflow_server, tmp_path: Path) -> None:
    codeset = example(tmp_path)
    (codeset / ".fuseml").mkdir()
    (codeset / ".fuseml" / "_org").write_text("acme")
    (codeset / ".fuseml" / "_project").write_text("iris")
    client = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url)
    client.delete_experiment(client.create_experiment("acme.iris"))
    result = run_cli("run", str(codeset),
                     env=step_env(tmp_path, mlflow_server.url, **NO_INFERENCE))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "experiment 'acme.iris' was deleted" in result.stderr
    experiment = client.get_experiment_by_name("acme.iris")
    assert experiment.lifecycle_stage == "active"
    assert client.get_run(results(tmp_path)["run-id"]).info.experiment_id == \
        experiment.experiment_id


def test_s3_artifacts_written_directly(s3_server, tmp_path: Path) -> None:
    """FuseML's set-up: the client writes to S3 itself (MLFLOW_S3_ENDPOINT_URL + keys)."""
    bucket = s3_server.create_bucket("direct-artifacts")
    store = f"sqlite:///{tmp_path / 'store.db'}"
    client = mlflow.MlflowClient(store)
    client.create_experiment("s3-direct", artifact_location=f"{bucket}/runs")
    env = step_env(tmp_path, store, FUSEML_MLFLOW_EXPERIMENT="s3-direct",
                   **s3_server.client_env(), **NO_INFERENCE)
    result = run_cli("run", str(example(tmp_path)), env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    url = results(tmp_path)["model-url"]
    assert url.startswith(f"{bucket}/runs/") and url.endswith("/artifacts")
    keys = [o["Key"] for o in s3_server.client().list_objects_v2(
        Bucket="direct-artifacts")["Contents"]]
    assert any(k.endswith("/artifacts/MLmodel") for k in keys)
    os.environ.update(s3_server.client_env())
    try:
        predicts(url)
    finally:
        for key in s3_server.client_env():
            os.environ.pop(key)


def test_s3_artifacts_proxied_by_server(s3_server, tmp_path: Path) -> None:
    from devservices import MlflowServer

    bucket = s3_server.create_bucket("proxied-artifacts")
    server = MlflowServer(tmp_path / "server", artifacts_destination=bucket,
                          env=s3_server.client_env()).start()
    try:
        result = run_cli("run", str(example(tmp_path)),
                         env=step_env(tmp_path, server.url, **NO_INFERENCE))
        assert result.returncode == 0, result.stderr[-3000:]
        assert results(tmp_path)["model-url"].startswith("mlflow-artifacts:")
        keys = [o["Key"] for o in s3_server.client().list_objects_v2(
            Bucket="proxied-artifacts")["Contents"]]
        assert any(k.endswith("/artifacts/MLmodel") for k in keys)
        mlflow.set_tracking_uri(server.url)
        predicts(results(tmp_path)["model-url"])
    finally:
        server.stop()


def test_model_saved_as_plain_run_artifacts(mlflow_server, tmp_path: Path) -> None:
    job = ("import argparse, tempfile, mlflow, mlflow.pyfunc\n"
           "class Echo(mlflow.pyfunc.PythonModel):\n"
           "    def predict(self, context, model_input):\n        return model_input\n"
           "with tempfile.TemporaryDirectory() as d:\n"
           "    mlflow.pyfunc.save_model(d + '/m', python_model=Echo(), pip_requirements=[])\n"
           "    mlflow.log_artifacts(d + '/m', 'model')\n")
    result = run_cli("run", str(scripted(tmp_path, job)), env=step_env(tmp_path, mlflow_server.url))
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = results(tmp_path)
    run = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url).get_run(outputs["run-id"])
    assert outputs["model-url"] == f"{run.info.artifact_uri}/model"
    assert outputs["model-uri"] == f"runs:/{run.info.run_id}/model"


LOG_OUTSIDE_A_RUN = (
    "import mlflow, mlflow.sklearn\n"
    "from sklearn.datasets import load_iris\n"
    "from sklearn.linear_model import LogisticRegression\n"
    "x, y = load_iris(return_X_y=True)\n"
    "model = LogisticRegression(max_iter=300).fit(x, y)\n"
    "mlflow.sklearn.log_model(model, name={name!r}, pip_requirements=['scikit-learn'])\n")


def test_model_logged_outside_the_run(mlflow_server, tmp_path: Path) -> None:
    """MLflow 3: `log_model` with no active run links the LoggedModel to no run (no source
    run id, not a run output). The step still finds the one its process created (tagged via
    MLFLOW_RUN_CONTEXT), not another run's, and says how to link it."""
    client = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url)
    experiment = client.get_experiment_by_name("scripted")
    experiment_id = (experiment.experiment_id if experiment
                     else client.create_experiment("scripted"))
    other = client.create_logged_model(experiment_id, name="model")  # someone else's
    result = run_cli("run", str(scripted(tmp_path, LOG_OUTSIDE_A_RUN.format(name="model"))),
                     env=step_env(tmp_path, mlflow_server.url))
    assert result.returncode == 0, result.stderr[-3000:]
    outputs = results(tmp_path)
    model_id = outputs["model-uri"].removeprefix("models:/")
    assert model_id != other.model_id
    logged = client.get_logged_model(model_id)
    assert logged.source_run_id in (None, "")  # MLflow did not link it
    assert logged.tags["mlflow_steps.run_id"] == outputs["run-id"]
    assert outputs["model-url"] == logged.artifact_location
    assert (f"logged model {model_id} ('model') is not linked to run {outputs['run-id']}"
            in result.stderr and "with mlflow.start_run():" in result.stderr)
    mlflow.set_tracking_uri(mlflow_server.url)
    predicts(outputs["model-uri"])


def test_model_under_another_name_is_named(mlflow_server, tmp_path: Path) -> None:
    result = run_cli("run", str(scripted(tmp_path, LOG_OUTSIDE_A_RUN.format(name="clf"))),
                     env=step_env(tmp_path, mlflow_server.url))
    assert result.returncode == 2, result.stderr[-3000:]
    assert result.stderr.strip().splitlines()[-1].endswith(
        "logged no model named 'model', but 'clf': set mlflow_artifact_path to the "
        "model's name")


def test_shell_metacharacters_stay_a_value(mlflow_server, tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    job = ("import argparse, mlflow\np = argparse.ArgumentParser()\n"
           "p.add_argument('--message'); p.add_argument('--code', type=int)\n"
           "mlflow.log_param('received', p.parse_args().message)\n")
    env = step_env(tmp_path, mlflow_server.url,
                   FUSEML_MLFLOW_ENTRYPOINT_ARGS=f"message='x; touch {marker}'")
    result = run_cli("run", str(scripted(tmp_path, job)), env=env)
    assert not marker.exists()
    assert "logged no model named 'model'" in result.stderr  # the job logs no model
    client = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url)
    run = client.search_runs([client.get_experiment_by_name("scripted").experiment_id],
                             max_results=1)[0]
    assert run.data.params["received"] == f"x; touch {marker}"


def test_credentials_masked_in_everything_printed(mlflow_server, tmp_path: Path) -> None:
    """Parameters in the command line, the verbose line and the project's own output."""
    job = ("import argparse, sys\np = argparse.ArgumentParser()\n"
           "p.add_argument('--message'); p.add_argument('--code', type=int)\n"
           "a = p.parse_args()\nprint('got', a.message)\n"
           "print('token', sys.argv[0], flush=True)\n")
    env = step_env(tmp_path, mlflow_server.url, FUSEML_VERBOSE="true", MY_API_TOKEN=SECRET,
                   FUSEML_MLFLOW_ENTRYPOINT_ARGS=f"message='https://bot:{SECRET}@data.example/x'")
    result = run_cli("run", str(scripted(tmp_path, job)), env=env)
    assert "got https://bot:***@data.example/x" in result.stderr
    assert SECRET not in result.stdout + result.stderr


def test_failing_project_marks_run_failed_and_writes_nothing(mlflow_server,
                                                             tmp_path: Path) -> None:
    job = "import sys, mlflow\nmlflow.log_param('started', 1)\nsys.exit(3)\n"
    result = run_cli("run", str(scripted(tmp_path, job)), env=step_env(tmp_path, mlflow_server.url))
    assert result.returncode == 3
    assert "exited with code 3" in result.stderr and "Traceback" not in result.stderr
    assert results(tmp_path) == {}
    run_id = result.stderr.split("is marked FAILED")[0].rsplit("run ", 1)[1].strip("; ")
    client = mlflow.MlflowClient(mlflow_server.url, mlflow_server.url)
    assert client.get_run(run_id).info.status == "FAILED"


@pytest.mark.parametrize(("extra", "message"), [
    ({"FUSEML_MLFLOW_ENTRYPOINT": "train"},
     "unknown entry point 'train' (MLproject declares: main)"),
    ({"FUSEML_MLFLOW_ENTRYPOINT_ARGS": "gamma=1"}, "'gamma' is not a parameter"),
    ({"FUSEML_MLFLOW_ENTRYPOINT_ARGS": "C=high"}, "C='high' is not a valid float"),
    ({"FUSEML_MLFLOW_ENTRYPOINT_ARGS": "C='0.1"}, "malformed argument list"),
    ({"FUSEML_MAX_ITER": "many"}, "max_iter='many' is not a valid int"),
    ({"FUSEML_MLFLOW_MODEL_ALIAS": "prod"}, "mlflow_model_alias: needs mlflow_register_model"),
    ({"MLFLOW_TRACKING_URI": "http://someone:hunter2-pass@127.0.0.1:9"},
     "tracking server http://someone:***@127.0.0.1:9: Connection refused (3 attempts)"),
    ({"MLFLOW_RUN_CONTEXT": "[1]"}, "MLFLOW_RUN_CONTEXT: is not a JSON object of tags"),
])
def test_bad_inputs_fail_cleanly(tmp_path: Path, extra: dict[str, str], message: str) -> None:
    extra = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:9", **extra}
    env = step_env(tmp_path, None, MLFLOW_STEPS_NETWORK_TIMEOUT="2", **extra)
    result = run_cli("run", str(example(tmp_path)), env=env)
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert message in lines[-1] and lines[-1].startswith("mlflow-steps: error: ")
    assert "Traceback" not in result.stderr and "hunter2-pass" not in result.stderr
    assert results(tmp_path) == {}
