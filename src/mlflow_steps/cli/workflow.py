"""`mlflow-steps workflow ...` (validate, run, runs, export) and `mlflow-steps env`."""

from __future__ import annotations

import getpass
import json
import os
import time
from dataclasses import asdict
from pathlib import Path

import click

from mlflow_steps.build.builder_plan import DIRECT, EXECUTORS
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.stepio import write_atomically
from mlflow_steps.core.terminal import shown
from mlflow_steps.workflow.envexport import DEFAULT_SELECTOR, FORMATS, format_env, parse_selector
from mlflow_steps.workflow.extensions import Identity, load_registry
from mlflow_steps.workflow.loader import load_workflow
from mlflow_steps.workflow.plan import Codeset, RunPlan, bind_inputs
from mlflow_steps.workflow.runs import RunRecord, RunStore, default_runs_dir
from mlflow_steps.workflow.tekton import TektonExport

DEFAULT_PROJECT = "local"

existing_file = click.Path(path_type=Path, exists=True, dir_okay=False)
extensions_option = click.option(
    "--extensions", type=click.Path(path_type=Path, exists=True),
    help="Extension records (FuseML format): a YAML/JSON file or a directory of them.")
project_option = click.option(
    "--project", default=DEFAULT_PROJECT, show_default=True,
    help="FuseML project of the codeset (.fuseml/_org; picks project-scoped credentials).")
user_option = click.option("--user", default=getpass.getuser, show_default="current user",
                           help="User for user-scoped credentials.")
runs_dir_option = click.option(
    "--runs-dir", type=click.Path(path_type=Path), default=default_runs_dir,
    show_default="$MLFLOW_STEPS_RUNS_DIR or ~/.local/share/mlflow-steps/runs",
    help="Where runs are recorded.")


def _key_values(pairs: tuple[str, ...]) -> dict[str, str]:
    values = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise StepError(f"expected NAME=VALUE, got {pair!r}", field="--input")
        values[key] = value
    return values


@click.group("workflow")
def workflow_group() -> None:
    """Validate, run (on a Docker engine) and export (to Tekton) FuseML workflow files."""


@workflow_group.command("validate")
@click.argument("files", nargs=-1, required=True, type=existing_file)
def validate_command(files: tuple[Path, ...]) -> None:
    """Check workflow FILES: shape, names and every {{ expression }}."""
    for file in files:
        workflow = load_workflow(file)
        click.echo(f"{file}: ok ({' → '.join(step.name for step in workflow.steps)})")


@workflow_group.command("run")
@click.argument("file", type=existing_file)
@click.option("--codeset", "codeset_dir", type=click.Path(path_type=Path, exists=True,
              file_okay=False), help="Directory bound to the workflow's codeset input.")
@click.option("--codeset-name", help="Codeset name (.fuseml/_project) [default: directory name].")
@project_option
@user_option
@click.option("--input", "inputs", multiple=True, metavar="NAME=VALUE",
              help="A workflow input (repeatable); others take their defaults.")
@extensions_option
@runs_dir_option
@click.option("--output-json", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the workflow outputs here, as JSON (only when the run succeeds).")
@click.option("--engine", envvar="DOCKER_HOST", show_envvar=True,
              help="Docker engine URL, e.g. unix:///var/run/docker.sock.")
@click.option("--network", default="host", show_default=True,
              help="Docker network of the step containers (host: loopback services reachable).")
@click.option("--keep-workspace", is_flag=True, help="Keep the run's codeset copy.")
@click.option("--forward-pip-config/--no-forward-pip-config", default=True, show_default=True,
              help="Give builder steps this machine's pip index/CA config (a read-only mount).")
@click.option("--builder", "builder_executor", type=click.Choice(("engine", *EXECUTORS)),
              default="engine", show_default=True,
              help="Builder steps: one container building on this engine through its socket, "
                   "or the in-cluster plan (prepare → executor → verify) with Kaniko or "
                   "Buildah, as `export --tekton` writes it.")
@click.option("--executor-image", help="The executor image of the plan "
              "[default: the published Kaniko or Buildah image].")
@click.option("-v", "--verbose", is_flag=True, help="Show resolved extensions and step env "
              "(credentials masked).")
def run_command(file: Path, codeset_dir: Path | None, codeset_name: str | None, project: str,
                user: str, inputs: tuple[str, ...], extensions: Path | None, runs_dir: Path,
                output_json: Path | None, engine: str | None, network: str,
                keep_workspace: bool, forward_pip_config: bool, builder_executor: str,
                executor_image: str | None, verbose: bool) -> None:
    """Run workflow FILE locally, each step a container, in order."""
    try:  # the Docker SDK (the `workflow` extra) is only needed to run
        from mlflow_steps.workflow.engine import ENGINE_TIMEOUT, DockerEngine  # Docker SDK
    except ImportError:
        raise StepError("the local runner needs the Docker SDK: "
                        "pip install 'mlflow-steps[workflow]'") from None
    from mlflow_steps.workflow.runner import Runner, RunOptions  # the Docker SDK too

    workflow = load_workflow(file)
    codeset_input = next((i.name for i in workflow.inputs if i.type == "codeset"), None)
    codeset = Codeset(codeset_input, codeset_name or codeset_dir.resolve().name, project) \
        if codeset_input and codeset_dir else None
    values = bind_inputs(workflow, _key_values(inputs), codeset)
    registry = load_registry(extensions) if extensions else None
    plan = RunPlan.create(workflow, values, codeset, registry, Identity(project, user))
    secrets = plan.secrets()

    def say(line: str) -> None:
        click.echo(shown(line, secrets), err=True)

    if verbose:
        for (step, selector), access in plan.access.items():
            say(f"[{step}] extension {selector} → {access.extension.id}/"
                f"{access.service.id} at {access.endpoint.url}")
    record_inputs = dict(values)
    if codeset:
        record_inputs[codeset.input] = f"{codeset_dir} ({codeset.project}/{codeset.name})"
    record = RunRecord.new(workflow.name, str(file), record_inputs,
                           [step.name for step in workflow.steps])
    timeout = float(os.environ.get("MLFLOW_STEPS_ENGINE_TIMEOUT") or ENGINE_TIMEOUT)
    runner = Runner(plan, DockerEngine(engine, timeout), RunStore(runs_dir), say)
    say(f"run {record.id}")
    outputs = runner.run(record, RunOptions(
        codeset_dir, network, keep_workspace, verbose, forward_pip_config,
        None if builder_executor == "engine" else builder_executor, executor_image))
    say(f"run {record.id} succeeded in {record.seconds:.1f}s")
    for name, value in outputs.items():
        click.echo(shown(f"{name}={value}", secrets))
    if output_json:
        write_atomically(output_json, json.dumps(outputs, indent=2) + "\n")


@workflow_group.command("runs")
@runs_dir_option
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def runs_command(runs_dir: Path, as_json: bool) -> None:
    """List recorded local runs, oldest first."""
    records = RunStore(runs_dir).list()
    if as_json:
        click.echo(json.dumps([asdict(record) for record in records], indent=2))
        return
    for record in records:
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(record.started))
        outputs = " ".join(f"{k}={v}" for k, v in record.outputs.items())
        click.echo(f"{record.id}  {record.status:<11} {started}  {record.seconds:7.1f}s  "
                   f"{outputs}".rstrip())


@workflow_group.command("export")
@click.argument("file", type=existing_file)
@click.option("--tekton", is_flag=True, help="Export to Tekton v1 (the only target).")
@click.option("-o", "--output-dir", type=click.Path(path_type=Path, file_okay=False),
              required=True, help="New or empty directory for the YAML files.")
@click.option("--extensions", type=click.Path(path_type=Path, exists=True),
              help="Extension records to export as ConfigMaps/Secrets (default: resolved "
                   "in-cluster from the ConfigMap and Secret <workflow>-ext-<selector>).")
@click.option("--builder", "executor", type=click.Choice((DIRECT, *EXECUTORS)),
              default=DIRECT, show_default=True,
              help="direct: the engine-free builder, one unprivileged step; kaniko/buildah: "
                   "the plan prepare → executor (its published image) → verify.")
@project_option
@user_option
def export_command(file: Path, tekton: bool, output_dir: Path, extensions: Path | None,
                   executor: str, project: str, user: str) -> None:
    """Write FILE as a Tekton Pipeline, Tasks, ConfigMaps/Secrets and a PipelineRun.

    A builder step becomes one unprivileged step (--builder direct), or a three-step Task:
    prepare → the executor → verify.
    """
    if not tekton:
        raise click.UsageError("choose the export target: --tekton")
    registry = load_registry(extensions) if extensions else None
    export = TektonExport(load_workflow(file), registry, Identity(project, user), executor)
    for path in export.write(output_dir):
        click.echo(str(path))


@click.command("env")
@click.option("--extensions", type=click.Path(path_type=Path, exists=True), required=True,
              help="Extension records (FuseML format): a YAML/JSON file or a directory.")
@click.option("--selector", "selectors", multiple=True, metavar="KEY=VALUE[,...]",
              help=f"Extension selector, e.g. product=mlflow,service_resource=s3 (repeatable) "
                   f"[default: {DEFAULT_SELECTOR}].")
@project_option
@user_option
@click.option("--format", "style", type=click.Choice(FORMATS), default="export",
              show_default=True)
@click.option("-o", "--output", type=click.Path(path_type=Path, dir_okay=False),
              help="Write to this file (mode 0600) instead of stdout.")
@click.option("-v", "--verbose", is_flag=True, help="Say what matched (credentials masked).")
def env_command(extensions: Path, selectors: tuple[str, ...], project: str, user: str,
                style: str, output: Path | None, verbose: bool) -> None:
    """Print the env vars of matching extensions, so a shell or notebook is configured.

    eval "$(mlflow-steps env --extensions extensions.yaml)"
    """
    registry = load_registry(extensions)
    env: dict[str, str] = {}
    secrets: set[str] = set()
    for index, text in enumerate(selectors or (DEFAULT_SELECTOR,)):
        access = registry.resolve(parse_selector(text, index), Identity(project, user))
        env.update(access.env())
        secrets.update(access.secrets())
        if verbose:
            click.echo(shown(f"{text} → {access.extension.id}/{access.service.id} at "
                             f"{access.endpoint.url}", secrets), err=True)
    if verbose:
        for key, value in env.items():
            click.echo(shown(f"  {key}={value}", secrets), err=True)
    text = format_env(env, style)
    if output:
        write_atomically(output, text)
        click.echo(f"wrote {len(env)} variables to {output}", err=True)
    else:
        click.echo(text, nl=False)
