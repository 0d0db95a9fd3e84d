"""The builder plan's own stages: ``prepare`` and ``verify`` (see builder_plan)."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

from mlflow_steps.build.dockerfile import PipConfigDelivery, write_context
from mlflow_steps.build.engines.buildah import buildah_args, registries_conf
from mlflow_steps.build.engines.engine import BuildRequest, secret_delivery
from mlflow_steps.build.engines.kaniko import kaniko_args
from mlflow_steps.build.plan import (
    BUILDAH_STORAGE_DRIVER,
    EXECUTORS,
    STEP_RESULTS_DIR,
    PlanFile,
)
from mlflow_steps.build.step import (
    BuilderInputs,
    BuildOutcome,
    build_request,
    existing_digest,
    log,
    pushed_digest,
    resolve_target,
    write_pip_secrets,
)
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.stepio import write_atomically
from mlflow_steps.image.client import RegistryClient
from mlflow_steps.image.credentials import docker_config_dir
from mlflow_steps.image.reference import ImageRef


def prepare(codeset: Path, inputs: BuilderInputs, executor_name: str, plan_dir: Path,
            environ: dict[str, str], skip_result: Path | None = None,
            args_result: Path | None = None) -> PlanFile:
    """Decide skip or build; for a build, write context, secrets and executor arguments."""
    if executor_name not in EXECUTORS:
        raise StepError(f"unknown executor (one of {', '.join(EXECUTORS)})", field="executor")
    if plan_dir.exists() and any(p.name != STEP_RESULTS_DIR for p in plan_dir.iterdir()):
        raise StepError("plan directory is not empty", source=str(plan_dir))
    plan_dir.mkdir(parents=True, exist_ok=True)
    target = resolve_target(codeset, inputs, environ)
    digest = existing_digest(target, inputs.force)
    ca_file = None
    if inputs.registry_ca:
        ca_file = plan_dir / "certs" / "ca.crt"
        ca_file.parent.mkdir()
        shutil.copyfile(inputs.registry_ca, ca_file)
    plan = PlanFile(executor_name, digest is not None, str(target.destination),
                    target.pull_reference, digest, inputs.insecure_registries,
                    str(ca_file) if ca_file else None)
    args: list[str] = []
    # The executor reads the secrets: kept unless this stage fails or is interrupted.
    with interrupt.scratch(plan_dir / "secrets", keep=True) as secrets_dir:
        if digest is None:
            pip = target.pip
            delivery = (PipConfigDelivery() if pip.empty
                        else secret_delivery(pip.ca_bundle is not None))
            context = write_context(target.spec, plan_dir / "context", delivery,
                                    inputs.conda_channel_alias, environ)
            secrets = {} if pip.empty else write_pip_secrets(secrets_dir, pip)
            request = build_request(target, inputs, context, docker_config_dir(environ),
                                    secrets)
            if executor_name == "kaniko" and inputs.reproducible is None:
                # Kaniko's --reproducible re-tars every layer (1.64x the build+push): on ask
                request = replace(request, source_date_epoch=None)
            args = _executor_args(executor_name, request, plan_dir, ca_file)
            log(f"plan: build {target.destination} with {executor_name} "
                f"({target.spec.strategy}, base {target.spec.base_image})")
        plan.write(plan_dir)
        for path, value in ((skip_result, "true" if plan.skip else "false"),
                            (args_result, json.dumps(args))):
            if path is not None:
                write_atomically(path, value)
    return plan


def _executor_args(executor: str, request: BuildRequest, plan_dir: Path,
                   ca_file: Path | None) -> list[str]:
    digest_file = plan_dir / "digest"
    if executor == "kaniko":
        return kaniko_args(request, digest_file, ca_file)
    (plan_dir / "registries.conf").write_text(registries_conf(request))
    build, push = buildah_args(request, digest_file, ca_file.parent if ca_file else None)
    for name, words in (("build.args", build), ("push.args", push)):
        words = [f"--storage-driver={BUILDAH_STORAGE_DRIVER}", *words]
        if any("\n" in word for word in words):
            raise StepError("a build argument contains a newline", field=name)
        (plan_dir / name).write_text("".join(f"{word}\n" for word in words))
    return []


def verify(plan_dir: Path, environ: dict[str, str]) -> BuildOutcome:
    """Check the pushed (or existing) manifest; the build-time secrets are removed first."""
    plan = PlanFile.read(plan_dir)
    shutil.rmtree(plan_dir / "secrets", ignore_errors=True)
    destination = ImageRef.parse(plan.destination)
    client = RegistryClient(destination.registry,
                            insecure_registries=plan.insecure_registries,
                            verify=plan.registry_ca or True, environ=environ)
    if plan.skip:
        digest = client.manifest_digest(destination.repository, destination.tag)
        if digest != plan.existing_digest:
            raise StepError(f"{destination} changed or vanished since prepare "
                            f"({plan.existing_digest} → {digest})", source="verify")
        return BuildOutcome(plan.pull_reference, digest or "", built=False, backend=None)
    digest = pushed_digest(client, destination, plan.executor)
    reported = plan_dir / "digest"
    if reported.is_file() and reported.read_text().strip() != digest:
        log(f"note: {plan.executor} pushed {reported.read_text().strip()}, the registry now "
            f"serves {digest} (another builder pushed the same tag)")
    return BuildOutcome(plan.pull_reference, digest, built=True, backend=plan.executor)
