"""The builder plan's own stages through the real CLI: prepare → (an executor) → verify.

The executor here is a recording stand-in run on the host with the arguments ``prepare``
wrote, so the contract between the stages is checked in CI without any executor image;
real Kaniko and Buildah run the same plan in test_workflow_e2e.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from support.helpers import EXAMPLE, push_tiny_image, run_cli

from mlflow_steps.build.builder_plan import (
    EXECUTORS,
    PLAN_MOUNT,
    plan_steps,
    substitute,
)

TOKEN = "plan-Token-" + os.urandom(4).hex()
RECORDER = """#!/bin/sh
# Stand-in for an executor: record its arguments, write the digest file, exit $EXIT.
printf '%s\\n' "$@" > "$RECORD"
for arg in "$@"; do
  case "$arg" in --digest-file=*) echo "sha256:$(printf x | sha256sum | cut -c1-64)" \
    > "${arg#--digest-file=}";; esac
done
exit "${EXIT:-0}"
"""


def prepare(tmp_path: Path, registry, executor: str = "kaniko", name: str = "plan",
            *options: str, **env: str):
    plan = tmp_path / name
    results = tmp_path / f"{name}-results"
    ca = tmp_path / "ca.pem"
    ca.write_text("-----BEGIN CERTIFICATE-----\nplan-ca\n-----END CERTIFICATE-----\n")
    environ = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "PIP_CERT": str(ca),
               "PIP_INDEX_URL": f"https://user:{TOKEN}@mirror.example/simple",
               "FUSEML_REGISTRY": registry.address, "FUSEML_REPOSITORY": "plan/trainer",
               "FUSEML_BASE_IMAGE": "python:3.11-slim", **env}
    result = run_cli("build", str(EXAMPLE), "--stage", "prepare", "--executor", executor,
                     "--plan-dir", str(plan), "--skip-result", str(results / "skip"),
                     "--args-result", str(results / "args"), *options, env=environ)
    return result, plan, results, environ


def verify(plan: Path, tmp_path: Path):
    env = {**os.environ, "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "results"),
           "TASK_RESULT": "mlflow-runtime", "TASK_RESULT_DIGEST": "digest"}
    return run_cli("build", "--stage", "verify", "--plan-dir", str(plan), env=env)


def test_prepare_then_executor_then_verify(tmp_path: Path, registry) -> None:
    prepared, plan, results, environ = prepare(tmp_path, registry)
    assert prepared.returncode == 0, prepared.stderr
    args = json.loads((results / "args").read_text())
    tag = run_cli("hash", str(EXAMPLE), env=environ).stdout.strip()
    destination = f"{registry.address}/plan/trainer:{tag}"
    # what it decided and why, in words (the step result stays true/false)
    assert prepared.stdout == \
        f"build: {destination} missing, plan kaniko (pip, base python:3.11-slim)\n"
    assert (results / "skip").read_text() == "false"
    assert f"--destination={destination}" in args
    assert f"--context=dir://{plan}/context" in args
    assert f"--secret=id=pip-config,src={plan}/secrets/pip.conf" in args
    assert args.count(f"--insecure-registry={registry.address}") == 1
    assert "--reproducible" not in args  # Kaniko's costs 1.6x: asked for only
    pip_conf = (plan / "secrets" / "pip.conf").read_text()
    assert TOKEN in pip_conf and "cert = /run/secrets/pip-ca.pem" in pip_conf
    dockerfile = (plan / "context" / "Dockerfile").read_text()
    assert "--mount=type=secret,id=pip-config,target=/etc/pip.conf" in dockerfile
    assert TOKEN not in dockerfile + prepared.stderr + json.dumps(args)
    assert TOKEN not in (plan / "plan.json").read_text()

    # The executor "succeeds" without pushing: verify fails and writes no result.
    recorder = tmp_path / "executor"
    recorder.write_text(RECORDER)
    recorder.chmod(0o755)
    subprocess.run([str(recorder), *args], env={"RECORD": str(tmp_path / "argv")}, check=True)
    assert (tmp_path / "argv").read_text().splitlines() == args
    failed = verify(plan, tmp_path)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert f"kaniko reported success but {destination} is not in the registry" in failed.stderr
    assert not (tmp_path / "results").exists()
    assert not (plan / "secrets").exists()  # build-time secrets end with the build

    # Now the tag exists: verify reports the registry's digest; a new prepare skips.
    digest = push_tiny_image(registry.url, "plan/trainer", tag)
    verified = verify(plan, tmp_path)
    assert verified.returncode == 0, verified.stderr
    assert (tmp_path / "results" / "mlflow-runtime").read_text() == destination
    assert (tmp_path / "results" / "digest").read_text() == digest
    again, plan2, results2, _ = prepare(tmp_path, registry, name="plan2")
    assert again.returncode == 0 and again.stdout == f"skip: {destination} exists ({digest})\n"
    assert (results2 / "skip").read_text() == "true"
    assert json.loads((results2 / "args").read_text()) == []
    assert not (plan2 / "context").exists() and not (plan2 / "secrets").exists()
    assert verify(plan2, tmp_path).returncode == 0
    # ... and for scripts, the same decisions as one JSON object
    decided = {"reference": destination, "executor": "kaniko", "strategy": "pip",
               "base": "python:3.11-slim"}
    skip, *_ = prepare(tmp_path, registry, "kaniko", "plan3", "--json")
    assert json.loads(skip.stdout) == {**decided, "decision": "skip", "reason": "exists",
                                       "digest": digest}
    forced, *_ = prepare(tmp_path, registry, "kaniko", "plan4", "--json", FUSEML_FORCE="true")
    assert json.loads(forced.stdout) == {**decided, "decision": "build", "reason": "forced",
                                         "digest": None}


def test_buildah_plan_writes_argument_files(tmp_path: Path, registry) -> None:
    prepared, plan, results, _ = prepare(tmp_path, registry, executor="buildah",
                                         FUSEML_REPOSITORY="plan/buildah")
    assert prepared.returncode == 0, prepared.stderr
    build = (plan / "build.args").read_text().splitlines()
    push = (plan / "push.args").read_text().splitlines()
    assert build[:2] == ["--storage-driver=vfs", "bud"] and build[-1] == f"{plan}/context"
    assert ["--secret", f"id=pip-config,src={plan}/secrets/pip.conf"] == \
        build[build.index("--secret", build.index("--secret") + 1):][:2]
    assert push[:2] == ["--storage-driver=vfs", "push"] and "--digestfile" in push
    assert build[build.index("--timestamp") + 1].isdigit()  # reproducible by default
    assert f'location = "{registry.address}"' in (plan / "registries.conf").read_text()
    assert json.loads((results / "args").read_text()) == []


def test_kaniko_plan_is_reproducible_when_asked(tmp_path: Path, registry) -> None:
    prepared, _, results, _ = prepare(tmp_path, registry, FUSEML_REPRODUCIBLE="true",
                                      FUSEML_REPOSITORY="plan/kaniko-reproducible")
    assert prepared.returncode == 0, prepared.stderr
    assert "--reproducible" in json.loads((results / "args").read_text())


def test_prepare_refuses_a_used_plan_dir_and_verify_needs_a_plan(tmp_path: Path,
                                                                 registry) -> None:
    (tmp_path / "plan").mkdir()
    (tmp_path / "plan" / "keep").write_text("mine")
    refused, _, results, _ = prepare(tmp_path, registry)
    assert refused.returncode == 2 and "plan directory is not empty" in refused.stderr
    assert not results.exists() and (tmp_path / "plan" / "keep").read_text() == "mine"
    missing = verify(tmp_path / "nothing", tmp_path)
    assert missing.returncode == 2 and "run the prepare stage first" in missing.stderr
    assert not (tmp_path / "results").exists()
    other = run_cli("build", "--stage", "verify", "--plan-dir", str(tmp_path / "plan"),
                    "--json")
    assert other.returncode == 2 and other.stderr.count("\n") == 1, other.stderr
    assert "--json: prints the prepare stage's decision" in other.stderr


def test_local_substitution_matches_tekton_variables(tmp_path: Path) -> None:
    results = tmp_path / "step-results"
    results.mkdir()
    (results / "executor-args").write_text('["--a=1", "--b=two words"]')
    (results / "skip").write_text("false")
    words = substitute(("x", "$(steps.prepare.results.executor-args[*])",
                        "--skip=$(steps.prepare.results.skip)",
                        "$(step.results.skip.path)"), results, PLAN_MOUNT)
    assert words == ["x", "--a=1", "--b=two words", "--skip=false",
                     f"{PLAN_MOUNT}/step-results/skip"]


def test_plan_steps_keep_our_python_out_of_the_executor() -> None:
    for executor in EXECUTORS.values():
        prepare_step, build_step, verify_step = plan_steps(executor)
        assert prepare_step.image is None and verify_step.image is None
        assert build_step.image == executor.image and build_step.only_when_building
        words = build_step.command + build_step.args
        assert "mlflow-steps" not in words and "mlflow-steps build" not in " ".join(words)
        assert prepare_step.command == verify_step.command == ("mlflow-steps", "build")
