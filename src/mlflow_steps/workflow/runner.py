"""Run a workflow locally: each step a container on a Docker engine, in order.

The codeset is copied to a workspace that every step mounts at its codeset path (FuseML's
``.fuseml/_org`` = project and ``.fuseml/_project`` = codeset name are written into it);
each step gets its own results directory at ``/tekton/results`` and its outputs are read
from there only after it exited 0. Steps whose image carries the label
``org.mlflow-steps.engine-socket=true`` (the builder) get the engine's socket.
"""

from __future__ import annotations

import collections
import re
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.errors import StepError
from mlflow_steps.workflow.engine import (
    ENGINE_SOCKET_LABEL,
    SOCKET_IN_CONTAINER,
    ContainerSpec,
    DockerEngine,
)
from mlflow_steps.workflow.model import Step
from mlflow_steps.workflow.plan import RunPlan
from mlflow_steps.workflow.redact import Redactor
from mlflow_steps.workflow.runs import RunRecord, RunStore, StepRecord

RESULTS_IN_CONTAINER = "/tekton/results"
TAIL_LINES = 10
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
        spec = self._container(step, image, results, run_dir / "workspace", record.id,
                               options.network)
        if options.verbose:
            for key, value in sorted(spec.env.items()):
                self.emit(f"[{step.name}] env {key}={value}")
        tail: collections.deque[str] = collections.deque(maxlen=TAIL_LINES)

        def on_line(line: str) -> None:
            tail.append(self.redact(line))
            step_record.build_skipped |= BUILD_SKIPPED in line
            self.emit(f"[{step.name}] {line}")

        exit_code = self.engine.run(spec, on_line)
        step_record.seconds = round(time.monotonic() - started, 3)
        step_record.exit_code = exit_code
        if exit_code != 0:
            step_record.status = "failed"
            self.emit(f"[{step.name}] failed (exit {exit_code}) after "
                      f"{step_record.seconds:.1f}s")
            last = " | ".join(line.strip() for line in tail if line.strip()) or "no output"
            raise StepFailed(f"step {step.name!r} failed with exit code {exit_code}: {last}",
                             exit_code, field=f"steps.{step.name}")
        self.plan.outputs[step.name] = outputs = self._read_outputs(step, results)
        step_record.outputs = self.redact.mapping(outputs)
        step_record.status = "succeeded"
        what = "skipped build, done" if step_record.build_skipped else "done"
        self.emit(f"[{step.name}] {what} in {step_record.seconds:.1f}s")

    def _container(self, step: Step, image: str, results: Path, workspace: Path,
                   run_id: str, network: str) -> ContainerSpec:
        env = self.plan.env(step)
        mounts = [(results, RESULTS_IN_CONTAINER)]
        if step.codeset:
            mounts.append((workspace, step.codeset.path))
        if self.engine.prepare(image).get(ENGINE_SOCKET_LABEL) == "true":
            socket = self.engine.socket()
            if socket is None:
                raise StepError(f"step {step.name!r} needs the engine's socket, but the "
                                f"engine is reached at {self.engine.base_url}",
                                field=f"steps.{step.name}")
            mounts.append((socket, SOCKET_IN_CONTAINER))
            env["DOCKER_HOST"] = f"unix://{SOCKET_IN_CONTAINER}"
        name = re.sub(r"[^a-zA-Z0-9_.-]", "-", f"mls-{run_id}-{step.name}")
        return ContainerSpec(name, image, env, tuple(mounts),
                             step.codeset.path if step.codeset else None, network,
                             labels={"org.mlflow-steps.run": run_id})

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
