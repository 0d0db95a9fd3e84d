"""`make demo`: the example codeset's environment tag, then build → train → serve → predict.

The tag comes first, hashed from exactly the inputs the workflow's builder step gets (its
FUSEML_* variables with the demo's workflow inputs, e.g. the local base image), so it is the
tag the workflow then builds or skips; the build context is rendered from the same inputs
into out/context. The step images are built into the local registry (127.0.0.1:5055, kept
under ~/.cache), an MLflow tracking server (sqlite store) and an S3-compatible artifact
store (moto) start on loopback, and `workflows/mlflow-e2e.yaml` runs on the Docker engine:
the builder builds the example's environment image (or skips it when the registry has it),
the trainer trains and logs the model, the server step serves it. One prediction request
ends it. The terminal gets a `==>` line per thing that happens and the results; the image
builds' and the workflow's output go to out/demo.log (a failure: its cause line and that
path). Everything the demo starts is stopped at the end; the registry data is kept.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import traceback
from pathlib import Path
from typing import TextIO

import click
import requests
from devservices import MlflowServer, MotoS3
from devstack import DockerEngine, Registry, base_reference, local_stack

from images import build, local_reference
from mlflow_steps.cli.build import hash_command
from mlflow_steps.cli.workflow import DEFAULT_PROJECT
from mlflow_steps.image.reference import ImageRef
from mlflow_steps.workflow.loader import load_workflow
from mlflow_steps.workflow.plan import Codeset, RunPlan, bind_inputs
from mlflow_steps.workflow.runs import RECORD_FILE, RunRecord, RunStore, default_runs_dir

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = Path("examples") / "sklearn-logreg"  # paths as shown: relative to the repository
WORKFLOW = Path("workflows") / "mlflow-e2e.yaml"
CONTEXT = Path("out") / "context"
LOG = Path("out") / "demo.log"
MLFLOW_STEPS = str(Path(sys.executable).parent / "mlflow-steps")
BUCKET = "mlflow-demo"
IRIS_ROWS = [[5.1, 3.5, 1.4, 0.2], [6.7, 3.0, 5.2, 2.3]]
EXTENSIONS = {
    "id": "mlflow-demo", "product": "mlflow", "version": "3.1.0", "zone": "local",
    "services": [
        {"id": "mlflow-tracking", "resource": "mlflow-tracking",
         "endpoints": [{"url": "{tracking}", "type": "internal",
                        "configuration": {"MLFLOW_TRACKING_URI": "{tracking}"}}]},
        {"id": "mlflow-store", "resource": "s3", "authrequired": True,
         "endpoints": [{"url": "{s3}", "type": "internal",
                        "configuration": {"MLFLOW_S3_ENDPOINT_URL": "{s3}",
                                          "AWS_DEFAULT_REGION": "us-east-1"}}],
         "credentials": [{"id": "demo", "scope": "global",
                          "configuration": {"AWS_ACCESS_KEY_ID": "{access}",
                                            "AWS_SECRET_ACCESS_KEY": "{secret}"}}]},
    ],
}
# The step inputs `hash` (and `render`) read: those of the builder's that shape the tag.
HASH_VARIABLES = frozenset(param.envvar for param in hash_command.params
                           if isinstance(param, click.Option) and isinstance(param.envvar, str))
DOING = {"builder": "build the environment image (the builder step; skipped when the "
                    "registry has the tag)",
         "trainer": "train and log the model (the trainer step, in the environment image)",
         "server": "serve the model (the server step: `mlflow models serve` in the "
                   "environment image)"}
STEP_STARTED = re.compile(r"\[(?P<step>[\w-]+)\] running \(")
STEP_DONE = re.compile(r"\[(?P<step>[\w-]+)\] (?P<skipped>skipped build, )?done in "
                       r"(?P<seconds>[\d.]+)s$")
RUN_STARTED = re.compile(r"run (?P<id>\S+)$")


def say(message: str) -> None:
    print(f"==> {message}", flush=True)


def workflow_inputs(registry: Registry) -> dict[str, str]:
    """The demo's inputs of the workflow: the step images and the base image where the demo
    pushes them, in ``registry``, which the environment image goes to too."""
    return {"builder-image": local_reference(registry, "builder", "latest"),
            "serve-image": local_reference(registry, "serve", "latest"),
            "registry": registry.address, "insecure-registries": registry.address,
            "base-image": base_reference(registry)}


def builder_step_env(inputs: dict[str, str]) -> dict[str, str]:
    """The variables the workflow's builder step gets with ``inputs``, as the runner sets
    them (the builder step uses no extension)."""
    workflow = load_workflow(REPO / WORKFLOW)
    codeset = Codeset(next(item.name for item in workflow.inputs if item.type == "codeset"),
                      EXAMPLE.name, DEFAULT_PROJECT)
    plan = RunPlan(workflow, bind_inputs(workflow, inputs, codeset), codeset, access={})
    return plan.env(next(step for step in workflow.steps if step.name == "builder"))


def tag_variables(step_env: dict[str, str]) -> dict[str, str]:
    """The builder step's inputs that shape the tag (empty ones are unset)."""
    return {name: value for name, value in step_env.items() if name in HASH_VARIABLES and value}


def mlflow_steps(variables: dict[str, str], *args: str, log: TextIO) -> str:
    """`mlflow-steps ARGS` in the repository with ``variables`` set; its stdout (its stderr
    goes to ``log``)."""
    log.flush()
    return subprocess.run([MLFLOW_STEPS, *args], cwd=REPO, env={**os.environ, **variables},
                          stdout=subprocess.PIPE, stderr=log, text=True, check=True).stdout


def environment_tag(variables: dict[str, str], log: TextIO) -> str:
    """The example's tag with the builder step's ``variables`` (the hashed spec: ``log``)."""
    output = mlflow_steps(variables, "hash", str(EXAMPLE), "--explain", log=log)
    log.write(f"{shown_command(variables, 'hash', str(EXAMPLE), '--explain')}\n{output}")
    return output.splitlines()[-1]


def shown_command(variables: dict[str, str], *args: str) -> str:
    return " ".join([*(f"{name}={shlex.quote(value)}" for name, value in variables.items()),
                     "mlflow-steps", *map(shlex.quote, args)])


def extensions_file(path: Path, tracking: str, s3: MotoS3) -> Path:
    """The demo's extension record (JSON is YAML) pointing at the services it started."""
    text = json.dumps(EXTENSIONS, indent=2)
    for key, value in {"tracking": tracking, "s3": s3.endpoint_url,
                       "access": s3.access_key, "secret": s3.secret_key}.items():
        text = text.replace("{" + key + "}", value)
    path.write_text(text)
    return path


def run_workflow(engine: DockerEngine, inputs: dict[str, str], extensions: Path,
                 log: TextIO) -> RunRecord:
    """Run the workflow, a `==>` line as each step starts and a line when it is done; its
    output to ``log``; the run's record."""
    runs = default_runs_dir()
    argv = [MLFLOW_STEPS, "workflow", "run", str(WORKFLOW), "--codeset", str(EXAMPLE),
            "--extensions", str(extensions), "--runs-dir", str(runs)]
    for name, value in inputs.items():
        argv += ["--input", f"{name}={value}"]
    log.write(f"$ {shlex.join(argv)}\n")
    log.flush()
    run_id = ""
    with subprocess.Popen(argv, cwd=REPO, env=engine.env(), stdout=log, stderr=subprocess.PIPE,
                          text=True) as process:
        assert process.stderr is not None
        for line in process.stderr:
            log.write(line)
            line = line.rstrip("\n")
            if (started := STEP_STARTED.match(line)) and started["step"] in DOING:
                say(DOING[started["step"]])
            elif done := STEP_DONE.match(line):
                what = "build skipped: the registry has the tag" if done["skipped"] else "done"
                print(f"    {what} ({done['seconds']} s)", flush=True)
            elif not run_id and (run := RUN_STARTED.fullmatch(line)):
                run_id = run["id"]
    if process.returncode != 0:
        raise subprocess.CalledProcessError(process.returncode, argv)
    return RunStore(runs).load(runs / run_id / RECORD_FILE)


def predict(url: str) -> list:
    answer = requests.post(url, json={"inputs": IRIS_ROWS}, timeout=60)
    answer.raise_for_status()
    return answer.json()["predictions"]


def demo(log: TextIO) -> None:
    with local_stack() as (engine, registry), tempfile.TemporaryDirectory(
            prefix="mls-demo-") as tmp:
        inputs = workflow_inputs(registry)
        variables = tag_variables(builder_step_env(inputs))
        tag = environment_tag(variables, log)
        say(f"environment {tag}: {EXAMPLE} on {inputs['base-image']}, hashed from the inputs "
            f"the workflow's builder step gets; the workflow builds or skips this tag")
        print(f"    what is hashed: {shown_command(variables, 'hash', str(EXAMPLE), '--explain')}")
        shutil.rmtree(REPO / CONTEXT, ignore_errors=True)
        rendered = mlflow_steps(variables, "render", str(EXAMPLE), "-o", str(CONTEXT), log=log)
        say(f"build context (render, the same inputs): {rendered.strip()}")
        say(f"build the step images (builder, serve) from this checkout into the local "
            f"registry {registry.address}")
        for name in ("builder", "serve"):
            build(engine, registry, name, "latest", output=log)
        s3 = MotoS3(Path(tmp) / "s3").start()
        tracking = None
        try:
            s3.create_bucket(BUCKET)
            tracking = MlflowServer(Path(tmp) / "mlflow",
                                    default_artifact_root=f"s3://{BUCKET}/artifacts").start()
            say(f"start an MLflow tracking server {tracking.url} (sqlite) and an S3 store "
                f"{s3.endpoint_url}; run {WORKFLOW}")
            record = run_workflow(engine, inputs, extensions_file(
                Path(tmp) / "extensions.json", tracking.url, s3), log)
            outputs = {step.name: step.outputs for step in record.steps}
            image = outputs["builder"]["mlflow-runtime"]
            if ImageRef.parse(image).tag != tag:
                raise RuntimeError(f"the workflow's environment image {image} does not have "
                                   f"the tag printed first ({tag})")
            url = record.outputs["prediction-url"]
            say(f"results of run {record.id} (`mlflow-steps workflow runs` lists it)")
            print(f"    image    {image} (the tag printed first)")
            print(f"    model    {outputs['trainer']['model-url']} (tracking server "
                  f"{tracking.url})")
            print(f"    serving  {url}")
            say(f"predict: POST {url} {json.dumps({'inputs': IRIS_ROWS})}")
            print(f"    predictions: {predict(url)}", flush=True)
        finally:
            engine.cli("rm", "-f", "mlflow-serve-local-sklearn-logreg", check=False)
            if tracking:
                tracking.stop()
            s3.stop()


def failure_line(exc: Exception) -> str:
    """Why the demo stopped, in one line: a command's last error line (its captured stderr,
    else the log's last line), or the exception."""
    if isinstance(exc, subprocess.CalledProcessError):
        output = exc.stderr or ""
        if isinstance(output, bytes):
            output = output.decode(errors="replace")
        lines = output.strip().splitlines() or \
            (REPO / LOG).read_text(errors="replace").strip().splitlines()
        return lines[-1] if lines else str(exc)
    return f"{type(exc).__name__}: {exc}"


def main() -> int:
    (REPO / LOG).parent.mkdir(exist_ok=True)
    with (REPO / LOG).open("w", buffering=1) as log:
        say(f"the image builds' and the workflow's output: {LOG}")
        try:
            demo(log)
        except Exception as exc:
            log.flush()
            cause = failure_line(exc)
            log.write(traceback.format_exc())
            print(f"demo failed: {cause}\n    full log: {LOG}", file=sys.stderr)
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
