"""Build backends through their contracts: executor arguments, selection, buildah conf."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from support.helpers import docker_config

from mlflow_steps.build.builder_plan import kaniko_args
from mlflow_steps.build.engines import select_backend
from mlflow_steps.build.engines.buildah import buildah_args, registries_conf
from mlflow_steps.build.engines.engine import BuildRequest
from mlflow_steps.core.errors import StepError
from mlflow_steps.image.client import RegistryClients
from mlflow_steps.image.reference import ImageRef


def request_for(tmp_path: Path, **overrides) -> BuildRequest:
    values = {
        "context": tmp_path / "ctx",
        "destination": ImageRef("reg.example:5000", "mlflow/trainer", "abc"),
        "base_image": ImageRef.parse("python:3.11-slim"),
        "docker_config": tmp_path / "docker",
        "registries": RegistryClients(),
    }
    return BuildRequest(**{**values, **overrides})


def test_kaniko_args_defaults(tmp_path: Path) -> None:
    assert kaniko_args(request_for(tmp_path), tmp_path / "digest", None) == [
        f"--context=dir://{tmp_path}/ctx", f"--dockerfile={tmp_path}/ctx/Dockerfile",
        "--destination=reg.example:5000/mlflow/trainer:abc", f"--digest-file={tmp_path}/digest",
        "--compressed-caching=false", "--push-retry=2", "--verbosity=info"]


def test_kaniko_args_secrets_insecure_cache_reproducible_and_ca(tmp_path: Path) -> None:
    request = request_for(
        tmp_path, insecure_registries=("reg.example:5000",), compressed_caching=True,
        cache_repo="reg.example:5000/cache", verbose=True, source_date_epoch=315600000,
        secrets={"pip-config": tmp_path / "pip.conf", "pip-ca": tmp_path / "ca.pem"},
        base_image=ImageRef.parse("127.0.0.1:5000/library/python:3.11-slim"))
    args = kaniko_args(request, tmp_path / "digest", tmp_path / "ca.crt")[4:]
    assert args == ["--compressed-caching=true", "--push-retry=2",
                    f"--secret=id=pip-ca,src={tmp_path}/ca.pem",
                    f"--secret=id=pip-config,src={tmp_path}/pip.conf",
                    "--cache=true", "--cache-repo=reg.example:5000/cache", "--reproducible",
                    "--insecure-registry=reg.example:5000", "--insecure-registry=127.0.0.1:5000",
                    f"--registry-certificate=reg.example:5000={tmp_path}/ca.crt",
                    "--verbosity=debug"]


def test_kaniko_args_name_a_shared_insecure_registry_once(tmp_path: Path) -> None:
    request = request_for(tmp_path, destination=ImageRef("127.0.0.1:5000", "t", "x"),
                          base_image=ImageRef.parse("127.0.0.1:5000/library/python:3.11"))
    assert kaniko_args(request, tmp_path / "d", None).count(
        "--insecure-registry=127.0.0.1:5000") == 1


def test_buildah_args(tmp_path: Path) -> None:
    config = docker_config(tmp_path / "docker", {"reg.example:5000": {"auth": "dTpw"}})
    request = request_for(tmp_path, docker_config=config, source_date_epoch=315600000,
                          secrets={"pip-config": tmp_path / "pip.conf"},
                          labels={"org.opencontainers.image.base.digest": "sha256:" + "a" * 64})
    build, push = buildah_args(request, tmp_path / "digest", tmp_path / "certs")
    auth = ["--authfile", f"{config}/config.json", "--cert-dir", f"{tmp_path}/certs"]
    assert build == ["bud", "--layers=false", "--format", "oci", "-f", f"{tmp_path}/ctx/Dockerfile",
                     "-t", "reg.example:5000/mlflow/trainer:abc", "--isolation", "chroot",
                     "--timestamp", "315600000",
                     "--secret", f"id=pip-config,src={tmp_path}/pip.conf",
                     "--label", "org.opencontainers.image.base.digest=sha256:" + "a" * 64,
                     *auth, f"{tmp_path}/ctx"]
    assert push == ["push", *auth, "--digestfile", f"{tmp_path}/digest",
                    "reg.example:5000/mlflow/trainer:abc",
                    "docker://reg.example:5000/mlflow/trainer:abc"]


def test_auto_selection_order(tmp_path: Path) -> None:
    """auto takes the direct builder (it needs no engine); its fallback, without an engine,
    buildah when it is on PATH (a stand-in here: selection only looks it up), else it says
    none is available."""
    with_buildah = tmp_path / "bin"
    with_buildah.mkdir()
    (with_buildah / "buildah").write_text("#!/bin/sh\nexit 0\n")
    (with_buildah / "buildah").chmod(0o755)
    no_engine = {"DOCKER_HOST": f"unix://{tmp_path}/no.sock", "PATH": str(with_buildah)}
    assert select_backend("auto", no_engine).name == "direct"
    assert select_backend("auto", no_engine, engines_only=True).name == "buildah"
    with pytest.raises(StepError, match="no build engine available"):
        select_backend("auto", {**no_engine, "PATH": str(tmp_path)}, engines_only=True)
    with pytest.raises(StepError, match="builder: no Docker engine answers"):
        select_backend("docker", no_engine)


def test_docker_selected_when_engine_answers(docker_engine) -> None:
    assert select_backend("auto", docker_engine.env(), engines_only=True).name == "docker"


def test_kaniko_is_not_a_backend() -> None:
    """Kaniko owns its container: it only runs as the build step of the builder plan."""
    with pytest.raises(KeyError):
        select_backend("kaniko", {})


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
    (1, "received unexpected HTTP status: 500 Internal Server Error", 2, True),
    (1, "denied: requested access to the resource is denied", 1, False),
])
def test_push_retries_only_transient_registry_races(tmp_path: Path, failures: int, error: str,
                                                    attempts: int, succeeds: bool,
                                                    monkeypatch) -> None:
    monkeypatch.setattr("mlflow_steps.build.engines.engine.time.sleep", lambda seconds: None)
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
