"""Build backends through their contracts: executor arguments, selection, buildah conf,
and the one line a failed build is reported by."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest
from support.helpers import docker_config

from mlflow_steps.build.builder_plan import kaniko_args
from mlflow_steps.build.engines import select_backend
from mlflow_steps.build.engines.buildah import BuildahBackend, buildah_args, registries_conf
from mlflow_steps.build.engines.engine import BuildRequest, failure_cause
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
    env = {**os.environ, "FAILURES": str(failures), "ERROR": error, "TMPDIR": str(tmp_path)}
    if succeeds:
        backend.push([str(push)], env, "test push")
    else:
        with pytest.raises(StepError, match=f"test push failed .*{error.split(':')[0]}"):
            backend.push([str(push)], env, "test push")
    assert int((tmp_path / "attempts").read_text()) == attempts
    # the log of the failure reported is kept, none of an attempt retried
    assert len(list(tmp_path.glob("mlflow-steps-buildah-*.log"))) == (0 if succeeds else 1)


# Failure lines as the engines print them (captured from real failed builds of a requirement
# that does not exist, BuildKit's long RUN lines shortened to LONG_RUN).
LONG_RUN = "/bin/sh -c set -a && " + "uv pip install --quiet -r layer.txt && " * 150
UV_NOT_FOUND = ["error: No solution found when resolving dependencies",
                "  cause: Because nosuchpkg was not found in the package registry and you "
                "require nosuchpkg==1.0, we can conclude that your requirements are "
                "unsatisfiable."]
UV_CAUSE = ("uv: No solution found when resolving dependencies: Because nosuchpkg was not "
            "found in the package registry and you require nosuchpkg==1.0, we can conclude "
            "that your requirements are unsatisfiable.")
DOCKER_20_10 = [  # BuildKit in Docker 20.10: "#step seconds output", then its own summary
    "#7 [resolve 2/2] RUN " + LONG_RUN, "#7 sha256:e7375e27c30f",
    *(f"#7 0.912 {line}" for line in UV_NOT_FOUND),
    f"#7 ERROR: executor failed running [{LONG_RUN}]: exit code: 1", "------",
    f" > [resolve 2/2] RUN {LONG_RUN}:", "------",
    f"executor failed running [{LONG_RUN}]: exit code: 1"]
BUILDKIT = [  # Docker 23+: the step's last lines again in the summary, then "ERROR: failed to"
    f"#7 [resolve 2/2] RUN {LONG_RUN}", *(f"#7 0.912 {line}" for line in UV_NOT_FOUND),
    "#7 ERROR: process \"/bin/sh -c ...\" did not complete successfully: exit code: 1",
    "------", f" > [resolve 2/2] RUN {LONG_RUN}:", *(f"0.912 {line}" for line in UV_NOT_FOUND),
    "------", "Dockerfile:7", "--------------------",
    f"ERROR: failed to solve: process \"{LONG_RUN}\" did not complete successfully: "
    "exit code: 1"]
BUILDAH = [f"[1/2] STEP 2/2: RUN {LONG_RUN}", *UV_NOT_FOUND, "subprocess exited with status 1",
           "subprocess exited with status 1",
           f'Error: building at STEP "RUN {LONG_RUN}": exit status 1']
KANIKO = [f"INFO[0012] RUN {LONG_RUN}", "INFO[0012] Initializing snapshotter ...",
          "INFO[0012] Taking snapshot of full filesystem...", "INFO[0013] Cmd: /bin/sh",
          f"INFO[0013] Args: [-c {LONG_RUN}]", f"INFO[0013] Running: [{LONG_RUN}]",
          *UV_NOT_FOUND, "error building image: error building stage: failed to execute "
          "command: waiting for process to exit: exit status 1"]
PIP = ["WARNING: Location 'file:///opt/pypi/simple/nosuchpkg/' is ignored: it is neither a "
       "file nor a directory.",
       "ERROR: Could not find a version that satisfies the requirement nosuchpkg==1.0 (from "
       "versions: none)", "ERROR: No matching distribution found for nosuchpkg==1.0"]


@pytest.mark.parametrize("lines", [DOCKER_20_10, BUILDKIT, BUILDAH, KANIKO,
                                   [f"[docker] {line}" for line in DOCKER_20_10]],
                         ids=["docker-20.10", "buildkit", "buildah", "kaniko", "builder-step"])
def test_failure_cause_is_the_package_tools_error(lines: list[str]) -> None:
    assert failure_cause(lines) == UV_CAUSE


def test_failure_cause_of_pip_and_of_uv_causes() -> None:
    assert failure_cause(PIP) == "pip: No matching distribution found for nosuchpkg==1.0"
    assert failure_cause([
        "error: Request failed after 3 retries in 8.9s",
        "  cause: Failed to fetch: http://127.0.0.1:1/simple/nosuchpkg/",
        "  cause: Connection refused (os error 111)", "exit status 1"]) == (
        "uv: Request failed after 3 retries in 8.9s: Failed to fetch: "
        "http://127.0.0.1:1/simple/nosuchpkg/: Connection refused (os error 111)")


@pytest.mark.parametrize(("lines", "start", "end"), [
    (DOCKER_20_10[-1:], "executor failed running [/bin/sh -c set -a && uv pip", ": exit code: 1"),
    (BUILDKIT[-1:], 'failed to solve: process "/bin/sh -c set -a',
     '" did not complete successfully: exit code: 1'),
    (BUILDAH[-3:], 'building at STEP "RUN /bin/sh -c', '": exit status 1'),
    (KANIKO[-1:], "error building image: error building stage: failed to execute command",
     "exit status 1")], ids=["docker-20.10", "buildkit", "buildah", "kaniko"])
def test_failure_cause_without_a_tool_error_is_the_engines_in_300_characters(
        lines: list[str], start: str, end: str) -> None:
    cause = failure_cause(["INFO[0001] Retrieving image manifest", *lines])
    assert cause.startswith(start) and cause.endswith(end) and len(cause) <= 300, cause


def test_failure_cause_is_masked_escaped_and_one_line() -> None:
    cause = failure_cause(["building", "error: cannot fetch https://me:hunter22@idx.example/x"
                           "\x1b]0;owned\x07\nforged", "", "  "], ["hunter22"])
    assert cause == ("uv: cannot fetch https://me:***@idx.example/x\\x1b]0;owned\\x07\\n"
                     "forged")
    assert failure_cause(["step output", "Traceback:", "ValueError: bad", ""]) == (
        "ValueError: bad")
    assert failure_cause([]) == "no output"


FAILING_BUILD = """#!/bin/sh
echo "INFO[0013] Running: [/bin/sh -c $(printf 'uv pip install -r layer.txt && %.0s' $(seq 150))]"
echo "fetching https://me:$SECRET_PASS@idx.example/simple/ with PIP_PASSWORD=$SECRET_PASS"
printf 'error: No solution found when resolving dependencies\\n  cause: nosuchpkg\\033[2J\\n'
echo "error building image: error building stage: failed to execute command: exit status 1"
exit "$CODE"
"""


def test_a_failed_engine_command_is_one_line_cause_first_and_a_masked_log(
        tmp_path: Path, capfd) -> None:
    """What the engine printed streams escaped and masked; its failure is one short line
    with the cause and the log file it is kept in, which has no credential either."""
    script = tmp_path / "engine"
    script.write_text(FAILING_BUILD)
    script.chmod(0o755)
    env = {**os.environ, "SECRET_PASS": "s3cr3t-value", "TMPDIR": str(tmp_path)}
    backend = BuildahBackend(env)
    with pytest.raises(StepError) as failed:
        backend.run_streaming([str(script)], {**env, "CODE": "1"}, "buildah bud")
    message = str(failed.value)
    match = re.fullmatch(r"buildah: buildah bud failed \(exit 1\): uv: No solution found when "
                         r"resolving dependencies: nosuchpkg\\x1b\[2J \(full log: (\S+)\)",
                         message)
    assert match, message
    log = Path(match[1])
    assert log.parent == tmp_path and log.stat().st_mode & 0o077 == 0
    text = log.read_text()
    assert "Running: [/bin/sh -c uv pip install" in text and "exit status 1" in text
    assert "https://me:***@idx.example" in text and "PIP_PASSWORD=***" in text
    streamed = capfd.readouterr().err
    assert "[buildah] error: No solution found" in streamed and "\x1b" not in streamed
    assert "s3cr3t-value" not in text + streamed + message

    backend.run_streaming([str(script)], {**env, "CODE": "0"}, "buildah bud")
    assert list(tmp_path.glob("mlflow-steps-*.log")) == [log]  # a success keeps none
