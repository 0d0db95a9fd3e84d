"""Builder executors side by side: cold build+push and skip, through the workflow runner.

One fresh Docker engine, one base image, the same builder image and pip configuration for
every contender; each contender pushes to a registry of its own so its first run really
builds examples/sklearn-logreg:
  * engine:  the builder step as one container building on the engine (Docker/BuildKit);
  * buildah: the in-cluster plan (prepare → Debian's buildah in a container → verify);
  * kaniko:  the same plan with a Kaniko executor image, when MLFLOW_STEPS_KANIKO_IMAGE
             names one the engine can pull (opt-in, like its test).
Cold is one run each, in turn; skip is the median of 3 runs of the same workflow once the
tag exists (the executor is not started).
Usage: python bench/executor_bench.py
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from devstack import DockerEngine, Registry, push_base_image, push_buildah_image  # noqa: E402
from result import docker_engine, ratio, table, write_result  # noqa: E402

from images import build as build_step_image  # noqa: E402

WORKFLOW = REPO / "workflows" / "mlflow-build.yaml"
EXAMPLE = REPO / "examples" / "sklearn-logreg"


def run_workflow(env: dict[str, str], registry: Registry, extra: list[str],
                 inputs: list[str]) -> float:
    argv = [sys.executable, "-m", "mlflow_steps", "workflow", "run", str(WORKFLOW),
            "--codeset", str(EXAMPLE), "--input", f"registry={registry.address}",
            "--input", f"insecure-registries={registry.address}", *inputs, *extra]
    start = time.perf_counter()
    result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        sys.exit(f"failed: {' '.join(extra)}\n{result.stderr[-3000:]}")
    return time.perf_counter() - start


def main() -> None:
    kaniko = os.environ.get("MLFLOW_STEPS_KANIKO_IMAGE", "")
    with tempfile.TemporaryDirectory(prefix="mls-bench-", dir="/tmp") as tmp:
        root = Path(tmp)
        engine = DockerEngine(root / "docker").start()
        images = Registry(root / "images").start()
        started = [images]
        try:
            base = push_base_image(engine, images)
            builder = build_step_image(engine, images, "builder", "bench")
            contenders: dict[str, list[str]] = {
                "engine (docker)": ["--builder", "engine"],
                "buildah plan": ["--builder", "buildah", "--executor-image",
                                 push_buildah_image(engine, images)]}
            if kaniko:
                contenders["kaniko plan"] = ["--builder", "kaniko", "--executor-image", kaniko]
            registries = {}
            for name in contenders:
                registries[name] = Registry(root / f"reg-{len(registries)}").start()
                started.append(registries[name])
            env = {**os.environ, "DOCKER_HOST": engine.host,
                   "MLFLOW_STEPS_RUNS_DIR": str(root / "runs")}
            inputs = ["--input", f"builder-image={builder}", "--input", f"base-image={base}"]
            cold = {name: run_workflow(env, registries[name], extra, inputs)
                    for name, extra in contenders.items()}
            skip_samples = {name: [run_workflow(env, registries[name], extra, inputs)
                                   for _ in range(3)] for name, extra in contenders.items()}
            engine_facts = docker_engine(engine.cli)
        finally:
            for service in started:
                service.stop()
            engine.stop()
    skip = {name: statistics.median(samples) for name, samples in skip_samples.items()}
    reference = cold["engine (docker)"]
    print(f"{'executor':<18}{'cold build+push':>16}{'vs engine':>11}{'skip (median 3)':>17}")
    for name in contenders:
        print(f"{name:<18}{cold[name]:>14.1f} s{cold[name] / reference:>10.2f}x"
              f"{skip[name]:>15.2f} s")
    if not kaniko:
        print("kaniko: not measured (set MLFLOW_STEPS_KANIKO_IMAGE to a Kaniko executor image)")
    write_result("executor", __doc__.splitlines()[0], {"kaniko image": kaniko or None}, [table(
        "Builder executors through the local runner",
        {"cold": "s", "skip": "s"},
        {name: {"cold": cold[name], "skip": skip_samples[name]} for name in contenders})],
        [ratio(f"{name} / engine, cold", cold[name] / reference)
         for name in contenders if name != "engine (docker)"],
        engine=engine_facts,
        checks={} if kaniko else {"kaniko plan": "not measured: set MLFLOW_STEPS_KANIKO_IMAGE"})


if __name__ == "__main__":
    main()
