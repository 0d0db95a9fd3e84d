"""The builder step end to end: real Docker engine / Buildah, real registry, real pip."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import threading
from pathlib import Path

import pytest
from support.helpers import EXAMPLE, run_cli, small_codeset
from support.image_checks import check_runtime_image, scan_pushed_image

SECRET_TOKEN = "SECRET-TOKEN-" + os.urandom(6).hex()
CA_MARKER = "CA-MARKER-" + os.urandom(6).hex()


@pytest.fixture(scope="module")
def secret_pip_env(tmp_path_factory) -> dict[str, str]:
    """pip settings with a credential in the index URL and a marked CA bundle."""
    ca = tmp_path_factory.mktemp("ca") / "bundle.pem"
    ca.write_text(Path(os.environ.get("PIP_CERT", "/etc/ssl/certs/ca-certificates.crt"))
                  .read_text() + f"\n# {CA_MARKER}\n")
    return {"PIP_INDEX_URL": f"https://mlsuser:{SECRET_TOKEN}@pypi.org/simple",
            "PIP_CERT": str(ca)}


def copy_example(tmp_path: Path, name: str = "codeset") -> Path:
    return Path(shutil.copytree(EXAMPLE, tmp_path / name))


def build(codeset: Path, env: dict[str, str], *args: str, process: bool = False):
    return run_cli("build", str(codeset), *args, env=env, process=process)


def test_docker_build_skip_and_rebuild(docker_engine, registry, base_image, secret_pip_env,
                                       tmp_path: Path) -> None:
    codeset = copy_example(tmp_path)
    results = tmp_path / "results"
    env = {**docker_engine.env(), **secret_pip_env, "MLFLOW_STEPS_RESULTS_DIR": str(results),
           "TASK_RESULT": "mlflow-runtime", "TASK_RESULT_DIGEST": "digest",
           "FUSEML_REGISTRY": registry.address, "FUSEML_BASE_IMAGE": base_image,
           "FUSEML_BUILDER": "docker", "FUSEML_PULL_REGISTRY": "127.0.0.1:30500"}
    first = build(codeset, env)
    assert first.returncode == 0, first.stderr[-3000:]
    reference = first.stdout.strip()
    tag = reference.rsplit(":", 1)[1]
    assert reference == f"127.0.0.1:30500/mlflow/trainer:{tag}"
    assert (results / "mlflow-runtime").read_text() == reference
    assert (results / "digest").read_text().startswith("sha256:")
    assert "[docker] " in first.stderr
    assert SECRET_TOKEN not in first.stderr + first.stdout

    pushed = f"{registry.address}/mlflow/trainer:{tag}"
    check_runtime_image(docker_engine, pushed)
    history = docker_engine.cli("history", "--no-trunc", pushed).stdout
    assert SECRET_TOKEN not in history and CA_MARKER not in history
    assert scan_pushed_image(pushed, tmp_path / "scan", [SECRET_TOKEN, CA_MARKER]) == []

    # Second run and a source-only change: skipped without touching any engine.
    no_engine = {**env, "DOCKER_HOST": f"unix://{tmp_path}/absent.sock"}
    (codeset / "train.py").write_text("print('changed source')\n")
    (codeset / "data.csv").write_text("a,b\n1,2\n")
    (results / "mlflow-runtime").unlink()
    again = build(codeset, no_engine)
    assert again.returncode == 0, again.stderr
    assert again.stdout.strip() == reference and "build skipped" in again.stderr
    assert (results / "mlflow-runtime").read_text() == reference

    # A requirements change is a new tag.
    conda = (codeset / "conda.yaml").read_text().replace("      - boto3\n",
                                                         "      - boto3\n      - six\n")
    (codeset / "conda.yaml").write_text(conda)
    changed = run_cli("hash", str(codeset), env=env)
    assert changed.returncode == 0 and changed.stdout.strip() not in ("", tag), changed.stderr

    # Two builders racing on one tag both succeed (a small codeset: the race is the point).
    small = small_codeset(tmp_path)
    outcomes: list = [None, None]

    def racer(index: int) -> None:
        outcomes[index] = build(small, {**env, "FUSEML_REPOSITORY": "race/trainer",
                                        "MLFLOW_STEPS_RESULTS_DIR":
                                        str(tmp_path / f"race{index}")}, "--force",
                                process=True)  # two builders at once: two processes

    threads = [threading.Thread(target=racer, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert all(o.returncode == 0 for o in outcomes), [o.stderr[-2000:] for o in outcomes]
    raced = outcomes[0].stdout.strip()
    assert raced == outcomes[1].stdout.strip() and "/race/trainer:" in raced
    rebuilt = f"{registry.address}/race/trainer:{raced.rsplit(':', 1)[1]}"
    docker_engine.cli("rmi", rebuilt, check=False)
    ran = docker_engine.cli("run", "--rm", "--network", "host", rebuilt, "python", "-c",
                            "import six", check=False)
    assert ran.returncode == 0, ran.stderr


def test_buildah_build_and_skip(docker_engine, registry, base_image, buildah_env,
                                tmp_path: Path) -> None:
    """A uv project (locked against PyPI as of mid-2021: six 1.16.0, not a newer one) built
    by Buildah, twice to the same digest, then skipped."""
    from support.locks import pypi_project

    env = {**buildah_env, "FUSEML_REGISTRY": registry.address, "FUSEML_BASE_IMAGE": base_image,
           "FUSEML_BUILDER": "buildah", "FUSEML_REPOSITORY": "buildah/trainer"}
    codeset = pypi_project(tmp_path / "uv", '"six>=1.15"', exclude_newer="2021-06-01T00:00:00Z")
    first = build(codeset, env, "--output-file", str(tmp_path / "out"), "--check-reproducible")
    assert first.returncode == 0, first.stderr[-3000:]
    assert "[buildah] " in first.stderr
    assert "reproducible: the second build gave the same digest" in first.stderr
    reference = (tmp_path / "out").read_text()
    assert reference.startswith(f"{registry.address}/buildah/trainer:")
    inspect = subprocess.run(["skopeo", "inspect", "--tls-verify=false",
                              f"docker://{reference}"], capture_output=True, text=True,
                             check=False)
    assert inspect.returncode == 0, inspect.stderr
    assert '"io.mlflow-steps.strategy": "pip"' in inspect.stdout
    check_runtime_image(docker_engine, reference, imports=("six",), locked=("six",))
    six = docker_engine.cli("run", "--rm", reference, "python", "-c",
                            "import six; print(six.__version__)")
    assert six.stdout.strip() == "1.16.0"
    again = build(codeset, {**env, "PATH": "/nonexistent"}, "--output-file",
                  str(tmp_path / "out2"))
    assert again.returncode == 0 and "build skipped" in again.stderr
    assert (tmp_path / "out2").read_text() == reference


def test_docker_digest_is_the_same_on_a_fresh_engine(docker_engine, registry, base_image,
                                                     stack_root, tmp_path: Path) -> None:
    """Another engine, empty caches, another day for all it knows: the same image bytes.
    The engine never pulled the base (BuildKit fetches it into a cache of its own): its
    layers are read from the registry."""
    from devstack import DockerEngine

    from mlflow_steps.image.client import RegistryClient

    client = RegistryClient(registry.address)
    codeset = small_codeset(tmp_path)
    settings = {"FUSEML_REGISTRY": registry.address, "FUSEML_BASE_IMAGE": base_image,
                "FUSEML_BUILDER": "docker"}
    first = build(codeset, {**docker_engine.env(), **settings,
                            "FUSEML_REPOSITORY": "fresh/first"})
    assert first.returncode == 0, first.stderr[-3000:]
    tag = first.stdout.strip().rsplit(":", 1)[1]
    expected = client.manifest_digest("fresh/first", tag)
    engine = DockerEngine(stack_root / "docker-fresh").start()
    try:
        result = build(codeset, {**engine.env(), **settings, "FUSEML_REPOSITORY": "fresh/trainer"})
    finally:
        engine.stop()
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().endswith(f"fresh/trainer:{tag}")
    assert client.manifest_digest("fresh/trainer", tag) == expected
    assert ": mounted" in result.stderr  # the base layers: not uploaded again


def test_check_reproducible_reports_what_differs(docker_engine, registry, base_image,
                                                 tmp_path: Path) -> None:
    """The engine's own push (--no-reproducible) keeps build times: the check fails and says
    which files differ and how, from the registry."""
    env = {**docker_engine.env(), "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "results"),
           "TASK_RESULT": "image", "FUSEML_REGISTRY": registry.address,
           "FUSEML_BASE_IMAGE": base_image, "FUSEML_BUILDER": "docker",
           "FUSEML_REPOSITORY": "check/not-reproducible"}
    result = build(small_codeset(tmp_path), env, "--no-reproducible", "--check-reproducible")
    assert result.returncode == 1, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.fullmatch(r"mlflow-steps: error: build: not reproducible \(--no-reproducible was "
                        r"given\): two builds gave sha256:\w+ and sha256:\w+; what differs is "
                        r"listed above", last), last
    assert re.search(r"mlflow-steps:   layer \d+ \(RUN .*\): \d+ difference\(s\)",
                     result.stderr)
    assert re.search(r"mlflow-steps:     \S+: (kind, )?(mode, )?(owner, )?mtime", result.stderr)
    assert not (tmp_path / "results").exists()


def test_failed_build_writes_nothing(docker_engine, registry, base_image, tmp_path: Path) -> None:
    codeset = copy_example(tmp_path)
    (codeset / "conda.yaml").write_text((codeset / "conda.yaml").read_text().replace(
        "      - boto3\n", "      - mlflow-steps-no-such-package-xyz==9.9.9\n"))
    env = {**docker_engine.env(), "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "results"),
           "TASK_RESULT": "image"}
    result = build(codeset, env, "--registry", registry.address, "--base-image", base_image,
                   "--builder", "docker")
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    # the cause first, in one short line, then the log it was kept in
    failed = re.fullmatch(r"mlflow-steps: error: docker: docker build failed \(exit 1\): "
                          r"(?P<cause>uv: .*mlflow-steps-no-such-package-xyz.*) \(full log: "
                          r"(?P<log>\S+)\)", last)
    assert failed and len(failed["cause"]) <= 300, last
    assert "[resolve" in Path(failed["log"]).read_text()
    Path(failed["log"]).unlink()
    assert "Traceback" not in result.stderr and result.stdout == ""
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(("flag", "expected"), [
    ("--reproducible", r"registry 127\.0\.0\.1:\d+: blob upload POST http://127\.0\.0\.1:\d+"
     r"/v2/mlflow/trainer/blobs/uploads/ answered HTTP 405 .*; the registry refuses pushes"),
    ("--no-reproducible", r"docker: docker push failed")])
def test_push_refused_is_a_clear_failure(docker_engine, base_image, tmp_path: Path, flag: str,
                                         expected: str) -> None:
    """Our own push (reproducible) and `docker push` both end in one line saying so."""
    from devstack import Registry

    readonly = Registry(tmp_path / "ro-registry", readonly=True).start()
    try:
        env = {**docker_engine.env(), "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "results"),
               "TASK_RESULT": "image", "TMPDIR": str(tmp_path)}  # where a failure's log is kept
        result = build(small_codeset(tmp_path), env, "--registry", readonly.address,
                       "--base-image", base_image, "--builder", "docker", flag)
    finally:
        readonly.stop()
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert re.match(f"mlflow-steps: error: {expected}", last), last
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "results").exists()


def test_registry_errors_stop_before_building(tmp_path: Path) -> None:
    from devstack import free_port

    env = {**os.environ, "MLFLOW_STEPS_RESULTS_DIR": str(tmp_path / "r"), "TASK_RESULT": "x"}
    result = build(EXAMPLE, env, "--registry", f"127.0.0.1:{free_port()}")
    assert result.returncode == 2
    assert "unreachable after 3 attempts (connection refused)" in result.stderr
    assert "building" not in result.stderr and not (tmp_path / "r").exists()
