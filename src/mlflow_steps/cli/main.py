"""`mlflow-steps` command line: one subcommand per step; inputs map to flags and FUSEML_* vars."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from mlflow_steps import __version__
from mlflow_steps.build.engines import BUILDER_CHOICES, COMPRESSIONS
from mlflow_steps.build.fuseml import DEFAULT_REPOSITORY
from mlflow_steps.build.plan import DEFAULT_EXECUTOR, EXECUTORS, PLAN_MOUNT
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import Interrupted, exit_now, interruptible
from mlflow_steps.core.redaction import secret_values
from mlflow_steps.core.retry import BUDGET_VARIABLE, DEFAULT_BUDGET_SECONDS
from mlflow_steps.core.stepio import result_path, write_outputs
from mlflow_steps.core.terminal import report, shown
from mlflow_steps.env.hashing import env_tag, template_version
from mlflow_steps.env.spec import STRATEGIES, BuildOptions

if TYPE_CHECKING:
    from mlflow_steps.runtime.model import Registration

DEBUG_VARIABLE = "MLFLOW_STEPS_DEBUG"

# Each command imports what only it needs when it runs (the builder's skip path must not
# pay for MLflow, jinja2 or the engines).


def _empty_is_default(default: Any) -> Callable[[click.Context, click.Parameter, Any], Any]:
    def callback(_ctx: click.Context, _param: click.Parameter, value: Any) -> Any:
        return default if value in ("", None) else value

    return callback


def step_input(name: str, default: Any = None, **kwargs: Any) -> Callable[[Any], Any]:
    """A step input: flag ``--name-with-dashes`` and env var ``FUSEML_NAME`` (empty = unset)."""
    flag = f"--{name.replace('_', '-')}"
    if kwargs.get("type") is bool:
        flag = f"{flag}/--no-{name.replace('_', '-')}"
    return click.option(
        flag,
        name,
        envvar=f"FUSEML_{name.upper()}",
        default=default,
        callback=_empty_is_default(default),
        show_envvar=True,
        show_default=default is not None,
        **kwargs,
    )


def build_inputs(func: Callable[..., Any]) -> Callable[..., Any]:
    """Inputs that shape the environment, shared by hash/render/build."""
    for decorator in reversed((
        step_input("env_strategy", "auto", type=click.Choice(STRATEGIES),
                   help="auto: pip for conda envs that only hold python/pip, else conda."),
        step_input("base_image", help="Base image (default: python:X.Y-slim)."),
        step_input("miniconda_version",
                   help="Base conda environments on continuumio/miniconda3:TAG (not needed: "
                        "conda packages are installed without conda)."),
        step_input("resolve", False, type=bool,
                   help="Lock mode: resolve the requirements first and hash the pins, so a "
                        "new upstream release gives a new image (default: hash what the "
                        "codeset declares)."),
    )):
        func = decorator(func)
    return func


codeset_argument = click.argument(
    "codeset", type=click.Path(path_type=Path, file_okay=False), envvar="FUSEML_CODESET_PATH",
    default="/project",
)


def _options(env_strategy: str, base_image: str | None, miniconda_version: str | None,
             resolve: bool) -> BuildOptions:
    return BuildOptions(env_strategy=env_strategy, base_image=base_image,
                        miniconda_version=miniconda_version, resolve=resolve)


# Commands from subpackages that trainer images do not carry, loaded only when present.
LAZY_COMMANDS = {"server": "mlflow_steps.cli.server:server",
                 "workflow": "mlflow_steps.cli.workflow:workflow_group",
                 "env": "mlflow_steps.cli.workflow:env_command"}


class StepsGroup(click.Group):
    """Built-in steps plus the LAZY_COMMANDS whose subpackage is installed."""

    def _available(self) -> dict[str, str]:
        return {name: target for name, target in LAZY_COMMANDS.items()
                if importlib.util.find_spec(target.rsplit(".", 1)[0]) is not None}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._available()])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        target = self._available().get(cmd_name)
        if target is None:
            return super().get_command(ctx, cmd_name)
        module, attribute = target.split(":")
        return getattr(importlib.import_module(module), attribute)


def _hosts(text: str) -> tuple[str, ...]:
    """A comma-separated host list (insecure_registries), blanks dropped."""
    return tuple(host.strip() for host in text.split(",") if host.strip())


def _finite(_ctx: click.Context, param: click.Parameter, value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        raise click.BadParameter(f"{value} is not a number of seconds", param=param)
    return value


@click.group(cls=StepsGroup)
@click.version_option(__version__, prog_name="mlflow-steps")
@click.option("--network-timeout", type=click.FloatRange(0, 3600, min_open=True),
              envvar=BUDGET_VARIABLE, show_envvar=True, callback=_finite,
              help=f"Seconds any server (registry, tracking server) may take to answer, "
                   f"retries included [default: {DEFAULT_BUDGET_SECONDS:.0f}].")
def cli(network_timeout: float | None) -> None:
    """Build and run MLflow projects as FuseML-compatible workflow steps."""
    if network_timeout is not None:  # every command reads the budget from the environment
        os.environ[BUDGET_VARIABLE] = f"{network_timeout:g}"


forward_pip_config_input = step_input(
    "forward_pip_config", True, type=bool,
    help="Forward this machine's pip index/CA config into the build (as a secret); its index "
         "URLs, without credentials, are part of the environment tag.")


conda_channel_alias_input = step_input(
    "conda_channel_alias",
    help="Where conda channel names resolve (a mirror; may carry credentials, which never "
         "reach a layer, a log or the tag) [default: CONDA_CHANNEL_ALIAS, the condarc's "
         "channel_alias, else https://conda.anaconda.org/].")


@cli.command("hash")
@codeset_argument
@build_inputs
@forward_pip_config_input
@click.option("--explain", is_flag=True, help="Print the normalised spec that is hashed.")
def hash_command(codeset: Path, explain: bool, forward_pip_config: bool, **inputs: Any) -> None:
    """Print the environment tag of CODESET (the tag `build` pushes)."""
    from mlflow_steps.build.step import resolve_spec

    spec, _ = resolve_spec(codeset, _options(**inputs), dict(os.environ), forward_pip_config)
    if explain:
        click.echo(spec.explain(template_version()))
    click.echo(env_tag(spec))


@cli.command("render")
@codeset_argument
@build_inputs
@forward_pip_config_input
@conda_channel_alias_input
@click.option("-o", "--output-dir", type=click.Path(path_type=Path), required=True,
              help="New or empty directory for the build context.")
def render_command(codeset: Path, output_dir: Path, forward_pip_config: bool,
                   conda_channel_alias: str | None, **inputs: Any) -> None:
    """Write the build context (Dockerfile, env files, tooling; conda packages installed)
    for CODESET."""
    from mlflow_steps.build.dockerfile import write_context
    from mlflow_steps.build.step import resolve_spec

    spec, _ = resolve_spec(codeset, _options(**inputs), dict(os.environ), forward_pip_config)
    write_context(spec, output_dir, conda_channel_alias=conda_channel_alias)
    click.echo(f"{output_dir}/Dockerfile ({spec.strategy}, tag {env_tag(spec)})")


@cli.command("build")
@codeset_argument
@build_inputs
@step_input("registry", help="Registry to push to [default: registry.fuseml-registry].")
@step_input("pull_registry", help="Registry consumers pull from (empty: same as registry).")
@step_input("repository", DEFAULT_REPOSITORY, help="Repository inside the registry.")
@step_input("builder", "auto", type=click.Choice(BUILDER_CHOICES),
            help="How to build here; auto: direct (no engine) where it applies, else docker, "
                 "then buildah (Kaniko: --stage).")
@step_input("compression", "gzip", type=click.Choice(COMPRESSIONS),
            help="Layer compression of the direct builder (zstd: OCI media types, smaller "
                 "and faster; pullers need zstd support, e.g. Docker 23+).")
@step_input("force", False, type=bool, help="Rebuild even if the tag exists.")
@step_input("verbose", False, type=bool, help="Log the hashed spec and build details.")
@step_input("compressed_caching", False, type=bool, help="Kaniko --compressed-caching.")
@step_input("cache_repo", help="Kaniko layer cache repository (enables --cache).")
@step_input("reproducible", None, type=bool,
            help="Same environment, same digest: every time in the image is clamped to an "
                 "epoch, 1980-01-01 (Docker: layers rewritten and pushed by us; "
                 "Buildah --timestamp; Kaniko --reproducible). Default: on, except for the "
                 "Kaniko plan (where it costs 1.6x).")
@step_input("check_reproducible", False, type=bool,
            help="Build twice (the second without the engine's layer cache) and fail with a "
                 "file-level report when the digests differ.")
@step_input("insecure_registries", "", help="Comma-separated registries reached over HTTP.")
@step_input("registry_ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
            help="CA bundle for a TLS registry with a private CA.")
@forward_pip_config_input
@conda_channel_alias_input
@click.option("--stage", type=click.Choice(("all", "prepare", "verify")), default="all",
              show_default=True,
              help="all: build here; prepare/verify: the builder plan's steps around an "
                   "executor container (see --plan-dir).")
@click.option("--executor", type=click.Choice(tuple(EXECUTORS)), default=DEFAULT_EXECUTOR,
              show_default=True, help="With --stage prepare: the executor the plan is for.")
@click.option("--plan-dir", type=click.Path(path_type=Path, file_okay=False),
              default=PLAN_MOUNT, show_default=True,
              help="With --stage: the directory the plan's steps share.")
@click.option("--skip-result", type=click.Path(path_type=Path, dir_okay=False),
              help="With --stage prepare: write true/false here (a Tekton step result).")
@click.option("--args-result", type=click.Path(path_type=Path, dir_okay=False),
              help="With --stage prepare: write the executor's arguments here (JSON array).")
@click.option("--output-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the pull reference here (default: /tekton/results/$TASK_RESULT).")
@click.option("--digest-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the image digest here (default: results/$TASK_RESULT_DIGEST).")
def build_command(codeset: Path, output_file: Path | None, digest_file: Path | None,
                  env_strategy: str, base_image: str | None, miniconda_version: str | None,
                  resolve: bool, insecure_registries: str, stage: str, executor: str,
                  plan_dir: Path, skip_result: Path | None, args_result: Path | None,
                  **inputs: Any) -> None:
    """Build and push CODESET's environment image unless the registry already has it."""
    with interruptible():  # SIGTERM/SIGINT: the build's files and children gone, no output
        from mlflow_steps.build.step import BuilderInputs, run_builder

        environ = dict(os.environ)
        builder_inputs = BuilderInputs(
            options=_options(env_strategy, base_image, miniconda_version, resolve),
            insecure_registries=_hosts(insecure_registries),
            **inputs,
        )
        if stage != "all" and builder_inputs.check_reproducible:
            raise StepError("builds twice here, so it needs --stage all (the builder plan "
                            "builds once, in the executor)", field="check_reproducible")
        if stage != "all":
            from mlflow_steps.build import plan_stages
        if stage == "prepare":
            plan = plan_stages.prepare(codeset, builder_inputs, executor, plan_dir, environ,
                                        skip_result, args_result)
            click.echo("skip" if plan.skip else "build")
            return
        if stage == "verify":
            outcome = plan_stages.verify(plan_dir, environ)
        else:
            outcome = run_builder(codeset, builder_inputs, environ)
        outputs = {}
        for path in (output_file, result_path(environ, "TASK_RESULT")):
            if path:
                outputs[path] = outcome.pull_reference
        for path in (digest_file, result_path(environ, "TASK_RESULT_DIGEST")):
            if path:
                outputs[path] = outcome.digest
        write_outputs(outputs)
        click.echo(outcome.pull_reference)


@cli.command("inspect")
@click.argument("image")
@click.option("--codeset", type=click.Path(path_type=Path, file_okay=False),
              help="Also say whether this codeset hashes to the image's environment "
                   "[default: the current directory when it has an MLproject].")
@click.option("--insecure-registries", default="",
              help="Comma-separated registries reached over HTTP.")
@click.option("--registry-ca", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              help="CA bundle for a TLS registry with a private CA.")
def inspect_command(image: str, codeset: Path | None, insecure_registries: str,
                    registry_ca: Path | None) -> None:
    """What runtime IMAGE holds (env tag, spec, strategy, base, lock), from the registry
    alone: no pull, no engine."""
    from mlflow_steps.build.inspect import codeset_matches, read_image
    from mlflow_steps.image.reference import ImageRef, check_reference
    from mlflow_steps.image.registry import RegistryClient

    check_reference(image, source="inspect", field="IMAGE")
    client = RegistryClient(
        ImageRef.parse(image).registry,
        insecure_registries=_hosts(insecure_registries),
        verify=str(registry_ca) if registry_ca else True)
    record = read_image(image, client)
    click.echo(report(record.lines()))
    if codeset is None and Path("MLproject").is_file():
        codeset = Path(".")
    if codeset is not None:
        click.echo(shown(codeset_matches(record, codeset, dict(os.environ))))


@cli.command("trace")
@click.argument("model_uri")
@click.option("--lock/--no-lock", default=True, show_default=True,
              help="Also read the image's recorded lock from the registry.")
@click.option("--insecure-registries", default="",
              help="Comma-separated registries reached over HTTP.")
def trace_command(model_uri: str, lock: bool, insecure_registries: str) -> None:
    """From MODEL_URI back to its run, the image that trained it (digest), its env tag and
    the environment's lock. The tracking server comes from MLFLOW_TRACKING_URI."""
    import mlflow

    from mlflow_steps.runtime.trace import trace_model

    trace = trace_model(model_uri, mlflow.MlflowClient())
    click.echo(report(trace.lines()))
    if lock and trace.image:
        from mlflow_steps.build.inspect import read_image
        from mlflow_steps.image.reference import ImageRef
        from mlflow_steps.image.registry import RegistryClient

        client = RegistryClient(
            ImageRef.parse(trace.image).registry,
            insecure_registries=_hosts(insecure_registries))
        click.echo(report(read_image(trace.image, client).lines()[2:]))


def _registration(name: str | None, alias: str | None, tags: str | None,
                  description: str | None) -> Registration | None:
    from mlflow_steps.runtime.model import Registration, parse_tags

    if not name:
        for field, value in (("mlflow_model_alias", alias), ("mlflow_model_tags", tags),
                             ("mlflow_model_description", description)):
            if value:
                raise StepError("needs mlflow_register_model (the registered model name)",
                                field=field)
        return None
    return Registration(name, alias, parse_tags(tags), description)


@cli.command("run")
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
    from mlflow_steps.runtime.step import RuntimeInputs, run_runtime

    environ = dict(os.environ)
    registration = _registration(mlflow_register_model, mlflow_model_alias, mlflow_model_tags,
                                 mlflow_model_description)
    outcome = run_runtime(codeset, RuntimeInputs(registration=registration, **inputs), environ)
    models_uri = outcome.registered_uri or outcome.model.models_uri
    outputs = {}
    for paths, value in (
        ((output_file, result_path(environ, "TASK_RESULT")), outcome.model.url),
        ((run_id_file, result_path(environ, "TASK_RESULT_RUN_ID")), outcome.run_id),
        ((model_uri_file, result_path(environ, "TASK_RESULT_MODEL_URI")), models_uri),
    ):
        outputs.update({path: value for path in paths if path})
    write_outputs(outputs)
    click.echo(f"mlflow-steps: run {outcome.run_id} logged {outcome.model.models_uri}"
               + (f", registered as {outcome.registered_uri}" if outcome.registered_uri else ""),
               err=True)
    click.echo(outcome.model.url)




@cli.command("serve")
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
    from mlflow_steps.runtime.serving import ServeInputs, serve_model

    environ = dict(os.environ)
    url = serve_model(ServeInputs(model=model or "", runtime_image=runtime_image or "",
                                  **inputs), environ)
    write_outputs({path: url for path in (output_file, result_path(environ, "TASK_RESULT"))
                   if path})
    click.echo(url)


def main(argv: list[str] | None = None) -> None:
    """Entry point: every failure is one line on stderr (credentials masked, control
    characters escaped); bad input exits 2."""
    try:
        cli.main(args=argv, prog_name="mlflow-steps", standalone_mode=False)
    except click.exceptions.Abort:
        _fail("aborted", 130)
    except Interrupted as exc:
        exit_now(exc.signum)
    except Exception as exc:  # one line, never a traceback (it could print a secret)
        message, code = _failure(exc)
        _fail(f"error: {message}", code)


def _failure(exc: Exception) -> tuple[str, int]:
    """The line and exit code for an exception escaping a command."""
    if isinstance(exc, StepError):
        return str(exc), exc.exit_code
    if isinstance(exc, click.ClickException):
        return exc.format_message(), exc.exit_code
    if isinstance(exc, OSError):
        return f"{exc.filename or ''}: {exc.strerror or exc}", 2
    if isinstance(exc, ImportError):
        return (f"Python module {exc.name!r} is not installed here (needed by this store or "
                "feature): pip install it", 2)
    if type(exc).__module__.startswith("mlflow."):
        from mlflow_steps.runtime.tracking import mlflow_error_line

        return f"mlflow: {mlflow_error_line(exc)}", 2
    if os.environ.get(DEBUG_VARIABLE):
        raise exc
    first = (str(exc).strip().splitlines() or [""])[0]
    return (f"internal error, please report it (set {DEBUG_VARIABLE}=1 for the traceback): "
            f"{type(exc).__name__}: {first}", 1)


def _fail(message: str, code: int) -> NoReturn:
    click.echo(f"mlflow-steps: {shown(message, secret_values(os.environ))}", err=True)
    sys.exit(code)
