"""`mlflow-steps run`, `serve` and `trace`: train in the image, serve the model, and trace a
model back to its run and image."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import click

from mlflow_steps.build.inspect import read_image
from mlflow_steps.cli.inputs import codeset_argument, hosts, step_input, write_results
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import interruptible
from mlflow_steps.core.terminal import report
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.reference import ImageRef
from mlflow_steps.runtime.model import Registration, parse_tags
from mlflow_steps.runtime.step import RuntimeInputs, run_runtime
from mlflow_steps.runtime.trace import trace_model


def _registration(name: str | None, alias: str | None, tags: str | None,
                  description: str | None) -> Registration | None:
    if not name:
        for field, value in (("mlflow_model_alias", alias), ("mlflow_model_tags", tags),
                             ("mlflow_model_description", description)):
            if value:
                raise StepError("needs mlflow_register_model (the registered model name)",
                                field=field)
        return None
    return Registration(name, alias, parse_tags(tags), description)


@click.command("run")
@codeset_argument
@step_input("mlflow_experiment", help="Experiment name or id (default: <org>.<project>).")
@step_input("mlflow_entrypoint", "main", help="MLproject entry point.")
@step_input("mlflow_entrypoint_args", "", help="name=value arguments, space/comma separated.")
@step_input("mlflow_artifact_path", "model", help="Name of the model the run logs.")
@step_input("mlflow_register_model", help="Register the model under this name.")
@step_input("mlflow_model_alias", help="Alias for the registered version.")
@step_input("mlflow_model_tags", help="Tags for the registered version: k=v,k2=v2.")
@step_input("mlflow_model_description", help="Description of the registered version.")
@step_input("verbose", False, type=bool, help="Log the resolved run settings (no secrets).")
@click.option("--output-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the model URL here (default: /tekton/results/$TASK_RESULT).")
@click.option("--run-id-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the run id here (default: results/$TASK_RESULT_RUN_ID).")
@click.option("--model-uri-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the models:/ URI here (default: results/$TASK_RESULT_MODEL_URI).")
def run_command(codeset: Path, output_file: Path | None, run_id_file: Path | None,
                model_uri_file: Path | None, mlflow_register_model: str | None,
                mlflow_model_alias: str | None, mlflow_model_tags: str | None,
                mlflow_model_description: str | None, **inputs: Any) -> None:
    """Run CODESET's MLflow project here (the image is the environment); print the model URL."""
    environ = dict(os.environ)
    registration = _registration(mlflow_register_model, mlflow_model_alias, mlflow_model_tags,
                                 mlflow_model_description)
    with interruptible():  # SIGTERM/SIGINT: the entry point ended, its run KILLED, no output
        outcome = run_runtime(codeset, RuntimeInputs(registration=registration, **inputs),
                              environ)
        write_results(environ, (output_file, "TASK_RESULT", outcome.model.url),
                      (run_id_file, "TASK_RESULT_RUN_ID", outcome.run_id),
                      (model_uri_file, "TASK_RESULT_MODEL_URI",
                       outcome.registered_uri or outcome.model.models_uri))
    click.echo(f"mlflow-steps: run {outcome.run_id} logged {outcome.model.models_uri}"
               + (f", registered as {outcome.registered_uri}" if outcome.registered_uri else ""),
               err=True)
    click.echo(outcome.model.url)


@click.command("serve")
@step_input("model", help="Model URL to serve (e.g. the trainer's model-url output).")
@step_input("runtime_image", help="Image with the model's environment (the builder's output).")
@step_input("app_name", "model", help="Name of the server container (re-use replaces it).")
@step_input("port", type=click.IntRange(1, 65535), help="Port to listen on [default: free].")
@step_input("advertise_host", "127.0.0.1", help="Host name put in the prediction URL.")
@click.option("--output-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the prediction URL here (default: results/$TASK_RESULT).")
def serve_command(output_file: Path | None, model: str | None, runtime_image: str | None,
                  **inputs: Any) -> None:
    """Serve MODEL with `mlflow models serve` in RUNTIME_IMAGE; print the prediction URL."""
    from mlflow_steps.runtime.serving import ServeInputs, serve_model  # requests: serve's only

    environ = dict(os.environ)
    url = serve_model(ServeInputs(model=model or "", runtime_image=runtime_image or "",
                                  **inputs), environ)
    write_results(environ, (output_file, "TASK_RESULT", url))
    click.echo(url)


@click.command("trace")
@click.argument("model_uri")
@click.option("--lock/--no-lock", default=True, show_default=True,
              help="Also read the image's recorded lock from the registry.")
@click.option("--insecure-registries", default="",
              help="Comma-separated registries reached over HTTP.")
def trace_command(model_uri: str, lock: bool, insecure_registries: str) -> None:
    """From MODEL_URI back to its run, the image that trained it (digest), its env tag and
    the environment's lock. The tracking server comes from MLFLOW_TRACKING_URI."""
    import mlflow  # ~1 s to import: only trace needs it here (not --help, not serve)

    trace = trace_model(model_uri, mlflow.MlflowClient())
    click.echo(report(trace.lines()))
    if lock and trace.image:
        client = RegistryClient(
            ImageRef.parse(trace.image).registry,
            insecure_registries=hosts(insecure_registries))
        click.echo(report(read_image(trace.image, client).lines()[2:]))
