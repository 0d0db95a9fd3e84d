"""`mlflow-steps hash`, `render` and `build`: the environment tag, the build context and the
image of a codeset (`build --stage prepare/verify`: the builder plan's steps)."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from mlflow_steps.build import builder_plan
from mlflow_steps.build.builder_plan import DEFAULT_EXECUTOR, EXECUTORS, PLAN_MOUNT
from mlflow_steps.build.engines import BUILDER_CHOICES, COMPRESSIONS
from mlflow_steps.build.fuseml import DEFAULT_REPOSITORY, OWN_LAYER_MB
from mlflow_steps.build.step import BuilderInputs, resolve_spec, run_builder
from mlflow_steps.cli.inputs import codeset_argument, hosts, step_input, write_results
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import interruptible
from mlflow_steps.core.terminal import shown
from mlflow_steps.env.hashing import env_tag, template_version
from mlflow_steps.env.spec import STRATEGIES, BuildOptions
from mlflow_steps.image.platforms import parse_platforms

# `render` imports its modules when it runs (and the builder plan when it builds): the
# builder's skip path (`build` when the tag exists) must not pay for jinja2 or the engines.


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
        step_input("dependency_groups", "",
                   help="Comma-separated dependency groups a pylock.toml or uv.lock installs "
                        "instead of its default groups; for a pixi.lock, the one environment "
                        "to install (empty: the defaults)."),
        step_input("platform", "linux/amd64",
                   help="Comma-separated platforms of the image (linux/amd64, linux/arm64): "
                        "several give one OCI index under the tag. The direct builder makes "
                        "each without emulation; engines build linux/amd64 only."),
    )):
        func = decorator(func)
    return func


def _options(env_strategy: str, base_image: str | None, miniconda_version: str | None,
             resolve: bool, dependency_groups: str, platform: str) -> BuildOptions:
    return BuildOptions(env_strategy=env_strategy, base_image=base_image,
                        miniconda_version=miniconda_version, resolve=resolve,
                        dependency_groups=hosts(dependency_groups),
                        platforms=parse_platforms(platform))


forward_pip_config_input = step_input(
    "forward_pip_config", True, type=bool,
    help="Forward this machine's pip index/CA config into the build (as a secret); its index "
         "URLs, without credentials, are part of the environment tag.")


conda_channel_alias_input = step_input(
    "conda_channel_alias",
    help="Where conda channel names resolve (a mirror; may carry credentials, which never "
         "reach a layer, a log or the tag) [default: CONDA_CHANNEL_ALIAS, the condarc's "
         "channel_alias, else https://conda.anaconda.org/].")


@click.command("hash")
@codeset_argument
@build_inputs
@forward_pip_config_input
@click.option("--explain", is_flag=True, help="Print the normalised spec that is hashed.")
def hash_command(codeset: Path, explain: bool, forward_pip_config: bool, **inputs: Any) -> None:
    """Print the environment tag of CODESET (the tag `build` pushes)."""
    spec, _ = resolve_spec(codeset, _options(**inputs), dict(os.environ), forward_pip_config)
    if explain:
        click.echo(spec.explain(template_version()))
    click.echo(env_tag(spec))


@click.command("render")
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
    from mlflow_steps.build.dockerfile import write_context  # jinja2: not on the skip path
    from mlflow_steps.build.image_plan import image_plan  # nor the image plan

    spec, _ = resolve_spec(codeset, _options(**inputs), dict(os.environ), forward_pip_config)
    write_context(image_plan(spec), output_dir, conda_channel_alias=conda_channel_alias)
    click.echo(f"{output_dir}/Dockerfile ({spec.strategy}, tag {env_tag(spec)})")


@click.command("build")
@codeset_argument
@build_inputs
@step_input("registry", help="Registry to push to [default: registry.fuseml-registry].")
@step_input("pull_registry", help="Registry consumers pull from (empty: same as registry).")
@step_input("repository", DEFAULT_REPOSITORY, help="Repository inside the registry.")
@step_input("builder", "auto", type=click.Choice(BUILDER_CHOICES),
            help="How to build here; auto: direct (no engine) where it applies, else docker, "
                 "then buildah; a named builder builds, or fails saying why, never falling "
                 "back to another (Kaniko: --stage).")
@step_input("compression", "gzip", type=click.Choice(COMPRESSIONS),
            help="Layer compression of the direct builder (zstd: OCI media types, smaller "
                 "and faster; pullers need zstd support, e.g. Docker 23+).")
@step_input("own_layer_mb", OWN_LAYER_MB, type=click.IntRange(1, 1 << 20),
            help="The direct builder gives each distribution of at least this many MB "
                 "installed a layer of its own, one blob in every image that has it.")
@click.option("-q", "--quiet", is_flag=True, envvar="MLFLOW_STEPS_QUIET", show_envvar=True,
              help="No progress display (a terminal) or progress lines (a log).")
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
@click.option("--json", "as_json", is_flag=True,
              help="With --stage prepare: print the decision as one JSON object (decision, "
                   "reference, reason, digest, executor, strategy, base) for scripts.")
@click.option("--output-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Also write the pull reference here (default: /tekton/results/$TASK_RESULT).")
@click.option("--digest-file", type=click.Path(path_type=Path, dir_okay=False),
              help="Write the image digest here (default: results/$TASK_RESULT_DIGEST).")
def build_command(codeset: Path, output_file: Path | None, digest_file: Path | None,
                  env_strategy: str, base_image: str | None, miniconda_version: str | None,
                  resolve: bool, dependency_groups: str, platform: str,
                  insecure_registries: str, stage: str,
                  executor: str,
                  plan_dir: Path, skip_result: Path | None, args_result: Path | None,
                  as_json: bool,
                  **inputs: Any) -> None:
    """Build and push CODESET's environment image unless the registry already has it."""
    with interruptible():  # SIGTERM/SIGINT: the build's files and children gone, no output
        environ = dict(os.environ)
        builder_inputs = BuilderInputs(
            options=_options(env_strategy, base_image, miniconda_version, resolve,
                             dependency_groups, platform),
            insecure_registries=hosts(insecure_registries),
            **inputs,
        )
        if stage != "all" and builder_inputs.check_reproducible:
            raise StepError("builds twice here, so it needs --stage all (the builder plan "
                            "builds once, in the executor)", field="check_reproducible")
        if as_json and stage != "prepare":
            raise StepError("prints the prepare stage's decision: use it with --stage prepare",
                            field="--json")
        if stage == "prepare":
            decision = builder_plan.prepare(codeset, builder_inputs, executor, plan_dir,
                                            environ, skip_result, args_result)
            click.echo(decision.json() if as_json else shown(decision.line()))
            return
        if stage == "verify":
            outcome = builder_plan.verify(plan_dir, environ)
        else:
            outcome = run_builder(codeset, builder_inputs, environ)
        write_results(environ, (output_file, "TASK_RESULT", outcome.pull_reference),
                      (digest_file, "TASK_RESULT_DIGEST", outcome.digest))
        click.echo(outcome.pull_reference)
