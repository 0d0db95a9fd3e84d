"""Run a workflow locally: each step a container on a Docker engine, in order.

The codeset is copied to a workspace that every step mounts at its codeset path (FuseML's
``.fuseml/_org`` = project and ``.fuseml/_project`` = codeset name are written into it);
each step gets its own results directory at ``/tekton/results`` and its outputs are read
from there only after it exited 0. Steps whose image carries the label
``org.mlflow-steps.engine-socket=true`` (the builder) get the engine's socket; those
labelled ``org.mlflow-steps.pip-config=true`` get this machine's build-time pip
configuration (index URLs, trusted hosts, CA bundle) as a read-only file mount that is
deleted when the step ends — the way ``mlflow-steps build`` forwards it on the host.
A step that fails ends the run with one line, its cause (``failure_cause``, as for a build
on the host) and its output kept in the run's directory (``logs/STEP.log``, as shown).
"""

from __future__ import annotations

import collections
import os
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

from mlflow_steps.build.builder_plan import (
    AUTH_VOLUME,
    EXECUTORS,
    PLAN_MOUNT,
    PLAN_VOLUME,
    SKIP_RESULT,
    is_builder_image,
    local_step_results,
    plan_steps,
    substitute,
)
from mlflow_steps.build.engines.engine import CAUSE_LINES, failure_cause
from mlflow_steps.core import interrupt
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import Redactor
from mlflow_steps.core.terminal import escape
from mlflow_steps.env.pip_secrets import CONFIG_MOUNT, CONFIG_MOUNT_ENV, write_config_mount
from mlflow_steps.env.pipconfig import collect_pip_config
from mlflow_steps.image.credentials import docker_config_dir
from mlflow_steps.workflow.engine import (
    ENGINE_SOCKET_LABEL,
    PIP_CONFIG_LABEL,
    SOCKET_IN_CONTAINER,
    ContainerSpec,
    DockerEngine,
)
from mlflow_steps.workflow.model import Step
from mlflow_steps.workflow.plan import RunPlan
from mlflow_steps.workflow.runs import RunRecord, RunStore, StepRecord

RESULTS_IN_CONTAINER = "/tekton/results"
LOGS_DIR = "logs"  # in the run's directory: a failed step's output, as shown
BUILD_SKIPPED = "build skipped"


class StepFailed(StepError):
    """A step container exited non-zero: the run stops with the same exit code."""

    def __init__(self, message: str, exit_code: int, field: str) -> None:
        super().__init__(message, field=field)
        self.exit_code = exit_code


@dataclass(frozen=True)
class RunOptions:
    codeset_dir: Path | None
    network: str = "host"
    keep_workspace: bool = False
    verbose: bool = False
    forward_pip_config: bool = True
    # Run builder steps as the three-step plan with this executor (None: one container
    # that builds on the engine through its socket).
    builder_executor: str | None = None
    executor_image: str | None = None


class Runner:
    """Runs one plan; every line it emits goes through the redactor first."""

    def __init__(self, plan: RunPlan, engine: DockerEngine, store: RunStore,
                 emit: Callable[[str], None]) -> None:
        self.plan = plan
        self.engine = engine
        self.store = store
        self.redact = Redactor(plan.secrets())
        self._emit = emit

    def emit(self, line: str) -> None:
        self._emit(self.redact(line))

    def run(self, record: RunRecord, options: RunOptions) -> dict[str, str]:
        """Run every step; return the workflow outputs (masked, like everything recorded)."""
        record.inputs = self.redact.mapping(record.inputs)
        self.store.save(record)
        run_dir = self.store.directory(record)
        workspace = run_dir / "workspace"
        started = time.monotonic()
        try:
            if options.codeset_dir is not None:
                self._prepare_workspace(options.codeset_dir, workspace)
            for step, step_record in zip(self.plan.workflow.steps, record.steps, strict=True):
                self._run_step(step, step_record, record, run_dir, options)
            outputs = {output.name: self.plan.outputs[
                self.plan.workflow.producer(output.name).name][output.name]
                for output in self.plan.workflow.outputs}
            record.outputs = self.redact.mapping(outputs)
            record.status = "succeeded"
        except BaseException as exc:
            record.status = "interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"
            record.error = self.redact(str(exc))
            raise
        finally:
            record.seconds = round(time.monotonic() - started, 3)
            self.store.save(record)
        if not options.keep_workspace:
            shutil.rmtree(workspace, ignore_errors=True)
        return record.outputs

    def _prepare_workspace(self, codeset_dir: Path, workspace: Path) -> None:
        codeset = self.plan.codeset
        assert codeset is not None
        shutil.copytree(codeset_dir, workspace, symlinks=True,
                        ignore=shutil.ignore_patterns(".git"))
        fuseml = workspace / ".fuseml"
        fuseml.mkdir(exist_ok=True)
        (fuseml / "_org").write_text(codeset.project)
        (fuseml / "_project").write_text(codeset.name)
        workspace.chmod(0o777)  # a non-root step may write there (e.g. a local mlruns store)

    def _run_step(self, step: Step, step_record: StepRecord, record: RunRecord, run_dir: Path,
                  options: RunOptions) -> None:
        step_record.image = image = self.plan.image(step)
        step_record.status = "running"
        self.store.save(record)
        self.emit(f"[{step.name}] running ({image})")
        started = time.monotonic()
        results = run_dir / "results" / step.name
        shutil.rmtree(results, ignore_errors=True)
        results.mkdir(parents=True)
        results.chmod(0o777)  # as in Tekton: steps may run as any user
        pip_dir = pip_config_dir(run_dir, step)
        as_plan = options.builder_executor is not None and is_builder_image(image)
        spec = self._container(step, image, results, run_dir, record.id, options,
                               engine_socket=not as_plan)
        if options.verbose:
            for key, value in sorted(spec.env.items()):
                self.emit(f"[{step.name}] env {key}={value}")
        tail: collections.deque[str] = collections.deque(maxlen=CAUSE_LINES)
        log_path = run_dir / LOGS_DIR / f"{step.name}.log"
        log_path.parent.mkdir(exist_ok=True)

        def on_line(line: str) -> None:
            tail.append(self.redact(line))
            log.write(escape(tail[-1]) + "\n")
            step_record.build_skipped |= BUILD_SKIPPED in line
            self.emit(f"[{step.name}] {line}")

        try:
            # kept when the step fails, removed when an exception ends the run
            with interrupt.scratch(log_path, keep=True), \
                    log_path.open("w", encoding="utf-8") as log:
                if as_plan:
                    exit_code = self._run_builder_plan(step, spec, run_dir, options, on_line)
                else:
                    exit_code = self.engine.run(spec, on_line)
        finally:
            shutil.rmtree(pip_dir, ignore_errors=True)
        step_record.seconds = round(time.monotonic() - started, 3)
        step_record.exit_code = exit_code
        if exit_code != 0:
            step_record.status = "failed"
            self.emit(f"[{step.name}] failed (exit {exit_code}) after "
                      f"{step_record.seconds:.1f}s")
            raise StepFailed(f"step {step.name!r} failed with exit code {exit_code}: "
                             f"{failure_cause(tail)} (full log: {log_path})", exit_code,
                             field=f"steps.{step.name}")
        log_path.unlink()
        self.plan.outputs[step.name] = outputs = self._read_outputs(step, results)
        step_record.outputs = self.redact.mapping(outputs)
        step_record.status = "succeeded"
        what = "skipped build, done" if step_record.build_skipped else "done"
        self.emit(f"[{step.name}] {what} in {step_record.seconds:.1f}s")

    def _run_builder_plan(self, step: Step, spec: ContainerSpec, run_dir: Path,
                          options: RunOptions, on_line: Callable[[str], None]) -> int:
        """prepare → build (the executor image, unless the plan skips it) → verify, as in
        the Tekton Task, sharing a private plan directory that is removed afterwards."""
        assert options.builder_executor is not None
        executor = EXECUTORS[options.builder_executor]
        if options.executor_image:
            executor = replace(executor, image=options.executor_image)
        self.engine.prepare(executor.image)
        plan_dir = run_dir / "plan" / step.name
        shutil.rmtree(plan_dir, ignore_errors=True)
        plan_dir.mkdir(parents=True, mode=0o700)
        results = local_step_results(plan_dir)
        auth = docker_config_dir(dict(os.environ)) / "config.json"
        try:
            for plan_step in plan_steps(executor):
                if plan_step.only_when_building and \
                        (results / SKIP_RESULT).read_text().strip() == "true":
                    self.emit(f"[{step.name}] {plan_step.name}: not run (the plan skips it)")
                    continue
                words = substitute(plan_step.command + plan_step.args, results, PLAN_MOUNT)
                paths = dict(plan_step.mounts)  # volume → where the step sees it
                mounts = [(plan_dir, paths[PLAN_VOLUME])]
                if plan_step.step_inputs:  # its results, codeset and package configuration
                    env = dict(spec.env)
                    mounts += list(spec.mounts)
                    if auth.is_file():
                        mounts.append((auth, f"{paths[AUTH_VOLUME]}/config.json"))
                        env["DOCKER_CONFIG"] = paths[AUTH_VOLUME]
                    container = replace(spec, name=f"{spec.name}-{plan_step.name}", env=env,
                                        mounts=tuple(mounts), command=tuple(words))
                else:
                    if auth.is_file():
                        mounts.append((auth, f"{paths[AUTH_VOLUME]}/config.json"))
                    container = ContainerSpec(
                        f"{spec.name}-{plan_step.name}", executor.image, {}, tuple(mounts),
                        None, spec.network, spec.labels, tuple(words),
                        plan_step.security_options)
                self.emit(f"[{step.name}] {plan_step.name} ({container.image})")
                exit_code = self.engine.run(container, on_line)
                if exit_code != 0:
                    return exit_code
            return 0
        finally:
            shutil.rmtree(plan_dir, ignore_errors=True)

    def _container(self, step: Step, image: str, results: Path, run_dir: Path,
                   run_id: str, options: RunOptions, engine_socket: bool = True
                   ) -> ContainerSpec:
        env = self.plan.env(step)
        mounts = [(results, RESULTS_IN_CONTAINER)]
        if step.codeset:
            mounts.append((run_dir / "workspace", step.codeset.path))
        info = self.engine.prepare(image)
        env.update({"MLFLOW_STEPS_IMAGE": image, "MLFLOW_STEPS_IMAGE_DIGEST": info.digest})
        pip_dir = pip_config_dir(run_dir, step)
        if (options.forward_pip_config and info.labels.get(PIP_CONFIG_LABEL) == "true"
                and write_config_mount(pip_dir, collect_pip_config(dict(os.environ)),
                                       info.user)):
            mounts.append((pip_dir, CONFIG_MOUNT))
            env.update(CONFIG_MOUNT_ENV)
        if engine_socket and info.labels.get(ENGINE_SOCKET_LABEL) == "true":
            socket = self.engine.socket()
            if socket is None:
                raise StepError(f"step {step.name!r} needs the engine's socket, but the "
                                f"engine is reached at {self.engine.base_url}",
                                field=f"steps.{step.name}")
            mounts.append((socket, SOCKET_IN_CONTAINER))
            env["DOCKER_HOST"] = f"unix://{SOCKET_IN_CONTAINER}"
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"mls-{run_id}-{step.name}")
        return ContainerSpec(name, image, env, tuple(mounts),
                             step.codeset.path if step.codeset else None, options.network,
                             labels={"org.mlflow-steps.run": run_id}, gpus=step.gpus)

    def _read_outputs(self, step: Step, results: Path) -> dict[str, str]:
        outputs = {}
        for name in step.outputs:
            path = results / name
            if not path.is_file():
                raise StepFailed(f"step {step.name!r} exited 0 but did not write its output "
                                 f"{name!r} ({RESULTS_IN_CONTAINER}/{name})", 1,
                                 field=f"steps.{step.name}")
            outputs[name] = path.read_text(errors="replace").strip()
        return outputs


def pip_config_dir(run_dir: Path, step: Step) -> Path:
    """Where ``step``'s forwarded pip configuration lives while it runs."""
    return run_dir / "pip" / step.name

