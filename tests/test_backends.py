"""Build backends through their contracts: Kaniko argv/auth/secrets, selection, buildah conf."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import EXAMPLE, docker_config

from mlflow_steps.backends import select_backend
from mlflow_steps.backends.base import BuildRequest
from mlflow_steps.backends.buildah import registries_conf
from mlflow_steps.builder import BuilderInputs, run_builder
from mlflow_steps.envspec import BuildOptions
from mlflow_steps.errors import StepError
from mlflow_steps.registry import ImageRef

RECORDER = """#!/bin/sh
# Stand-in for /kaniko/executor: record argv, env and visible files; write the digest file.
out="$(dirname "$0")/record"
mkdir -p "$out"
printf '%s\\n' "$@" > "$out/argv"
echo "$DOCKER_CONFIG" > "$out/docker_config"
cp "$DOCKER_CONFIG/config.json" "$out/config.json" 2>/dev/null
cp "$(dirname "$0")/mlflow-steps/pip.conf" "$out/pip.conf" 2>/dev/null
for arg in "$@"; do
  case "$arg" in
    --digest-file=*) echo "sha256:$(printf x | sha256sum | cut -c1-64)" > "${arg#--digest-file=}";;
    --context=dir://*) cp "${arg#--context=dir://}/Dockerfile" "$out/Dockerfile";;
  esac
done
echo "INFO kaniko stand-in built"
exit ${KANIKO_EXIT:-0}
"""


@pytest.fixture
def kaniko(tmp_path: Path) -> Path:
    executor = tmp_path / "kaniko" / "executor"
    executor.parent.mkdir()
    executor.write_text(RECORDER)
    executor.chmod(0o755)
    return executor


def request_for(tmp_path: Path, **overrides) -> BuildRequest:
    values = {
        "context": tmp_path / "ctx",
        "destination": ImageRef("reg.example:5000", "mlflow/trainer", "abc"),
        "base_image": ImageRef.parse("python:3.11-slim"),
        "docker_config": tmp_path / "docker",
    }
    return BuildRequest(**{**values, **overrides})


def test_kaniko_argv_defaults(kaniko: Path, tmp_path: Path) -> None:
    backend = select_backend("kaniko", {"MLFLOW_STEPS_KANIKO_EXECUTOR": str(kaniko)})
    argv = backend.argv(request_for(tmp_path), tmp_path / "digest")
    assert argv == [
        str(kaniko), f"--context=dir://{tmp_path}/ctx", f"--dockerfile={tmp_path}/ctx/Dockerfile",
        "--destination=reg.example:5000/mlflow/trainer:abc", f"--digest-file={tmp_path}/digest",
        "--compressed-caching=false", "--push-retry=2", "--verbosity=info"]


def test_kaniko_argv_insecure_cache_and_ca(kaniko: Path, tmp_path: Path) -> None:
    backend = select_backend("kaniko", {"MLFLOW_STEPS_KANIKO_EXECUTOR": str(kaniko)})
    request = request_for(
        tmp_path, insecure_registries=("reg.example:5000",), compressed_caching=True,
        cache_repo="reg.example:5000/cache", verbose=True,
        base_image=ImageRef.parse("127.0.0.1:5000/library/python:3.11-slim"),
        registry_ca=tmp_path / "ca.crt")
    argv = backend.argv(request, tmp_path / "digest")[5:]
    assert argv == ["--compressed-caching=true", "--push-retry=2", "--cache=true",
                    "--cache-repo=reg.example:5000/cache", "--insecure", "--skip-tls-verify",
                    "--insecure-pull", "--skip-tls-verify-pull",
                    f"--registry-certificate=reg.example:5000={tmp_path}/ca.crt",
                    "--verbosity=debug"]


def test_kaniko_run_through_the_builder(kaniko: Path, tmp_path: Path, registry) -> None:
    """The real builder drives the executor; the push is verified against the registry."""
    ca = tmp_path / "ca.pem"
    ca.write_text("CA")
    config = docker_config(tmp_path / "dockercfg", {registry.address: {"auth": "dTpw"}})
    environ = {**os.environ, "MLFLOW_STEPS_KANIKO_EXECUTOR": str(kaniko),
               "DOCKER_CONFIG": str(config), "PIP_INDEX_URL": "https://u:tok@mirror.example/s",
               "PIP_CERT": str(ca)}
    with pytest.raises(StepError, match=r"kaniko reported success but .* is not in the registry"):
        run_builder(EXAMPLE, BuilderInputs(registry=registry.address, builder="kaniko",
                                           options=BuildOptions(base_image="python:3.11-slim")),
                    environ)
    record = kaniko.parent / "record"
    argv = (record / "argv").read_text().splitlines()
    assert argv[2].startswith(f"--destination={registry.address}/mlflow/trainer:")
    assert "--insecure" in argv and "--insecure-pull" not in argv
    assert (record / "docker_config").read_text().strip() == str(kaniko.parent / ".docker")
    assert json.loads((record / "config.json").read_text())["auths"][registry.address]
    pip_conf = (record / "pip.conf").read_text()
    assert "index-url = https://u:tok@mirror.example/s" in pip_conf
    assert f"cert = {kaniko.parent}/mlflow-steps/pip-ca.pem" in pip_conf
    dockerfile = (record / "Dockerfile").read_text()
    assert f"export PIP_CONFIG_FILE={kaniko.parent}/mlflow-steps/pip.conf" in dockerfile
    assert "tok" not in dockerfile.replace("tooling", "")
    assert not (kaniko.parent / "mlflow-steps" / "pip.conf").exists()  # secrets removed


def test_kaniko_failure_is_reported_with_its_last_lines(kaniko: Path, tmp_path: Path,
                                                        registry) -> None:
    environ = {**os.environ, "MLFLOW_STEPS_KANIKO_EXECUTOR": str(kaniko), "KANIKO_EXIT": "3"}
    with pytest.raises(StepError, match=r"kaniko build failed \(exit 3\): .*stand-in built"):
        run_builder(EXAMPLE, BuilderInputs(registry=registry.address, builder="kaniko",
                                           options=BuildOptions(base_image="python:3.11-slim")),
                    environ)


def test_auto_selection_order(kaniko: Path, tmp_path: Path) -> None:
    with_kaniko = {"MLFLOW_STEPS_KANIKO_EXECUTOR": str(kaniko), "PATH": os.environ["PATH"]}
    assert select_backend("auto", with_kaniko).name == "kaniko"
    no_engine = {"MLFLOW_STEPS_KANIKO_EXECUTOR": str(tmp_path / "none"),
                 "DOCKER_HOST": f"unix://{tmp_path}/no.sock", "PATH": os.environ["PATH"]}
    assert select_backend("auto", no_engine).name == "buildah"
    with pytest.raises(StepError, match="no build engine available"):
        select_backend("auto", {**no_engine, "PATH": str(tmp_path)})
    with pytest.raises(StepError, match="builder: no Docker engine answers"):
        select_backend("docker", no_engine)


def test_docker_selected_when_engine_answers(docker_engine, tmp_path: Path) -> None:
    environ = {**docker_engine.env(), "MLFLOW_STEPS_KANIKO_EXECUTOR": str(tmp_path / "none")}
    assert select_backend("auto", environ).name == "docker"


def test_buildah_registries_conf(tmp_path: Path) -> None:
    request = request_for(
        tmp_path, destination=ImageRef.parse("127.0.0.1:5000/mlflow/trainer:x"),
        base_image=ImageRef.parse("mirror.corp:443/library/python:3.11-slim"),
        insecure_registries=("mirror.corp:443",))
    assert registries_conf(request) == (
        'unqualified-search-registries = ["docker.io"]\n\n'
        '[[registry]]\nlocation = "127.0.0.1:5000"\ninsecure = true\n\n'
        '[[registry]]\nlocation = "mirror.corp:443"\ninsecure = true\n')


FLAKY_PUSH = """#!/bin/sh
# A push that loses a race with a concurrent push of the same blobs N times, then succeeds.
count_file="$(dirname "$0")/attempts"
n=$(($(cat "$count_file" 2>/dev/null || echo 0) + 1))
echo "$n" > "$count_file"
if [ "$n" -le "$FAILURES" ]; then echo "errors: $ERROR"; exit 1; fi
echo "pushed"
"""


@pytest.mark.parametrize(("failures", "error", "attempts", "succeeds"), [
    (0, "", 1, True),
    (1, "manifest blob unknown: blob unknown to registry", 2, True),
    (2, "digest invalid: provided digest did not match uploaded content", 3, True),
    (3, "blob upload unknown", 3, False),
    (1, "denied: requested access to the resource is denied", 1, False),
])
def test_push_retries_only_transient_registry_races(tmp_path: Path, failures: int, error: str,
                                                    attempts: int, succeeds: bool,
                                                    monkeypatch) -> None:
    monkeypatch.setattr("mlflow_steps.backends.base.time.sleep", lambda seconds: None)
    push = tmp_path / "push"
    push.write_text(FLAKY_PUSH)
    push.chmod(0o755)
    backend = select_backend("buildah", dict(os.environ))
    env = {**os.environ, "FAILURES": str(failures), "ERROR": error}
    if succeeds:
        backend.push([str(push)], env, "test push")
    else:
        with pytest.raises(StepError, match=f"test push failed .*{error.split(':')[0]}"):
            backend.push([str(push)], env, "test push")
    assert int((tmp_path / "attempts").read_text()) == attempts
