"""The example, and a conda environment, built for linux/amd64 and linux/arm64 by the direct
builder on this amd64 machine, from a base index whose arm64 image is made of Debian's arm64
packages: the engine pulls the amd64 image through the index, and the arm64 image's own
Python imports the environment (and trains the example) under qemu-user (run explicitly, no
binfmt)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from multiarch_base import push_multiarch_base
from support.helpers import EXAMPLE
from support.image_checks import layer_files
from support.synthetic_base import build

from mlflow_steps.image.client import RegistryClient

QEMU = shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static"
BOTH = "linux/amd64,linux/arm64"
ELF_MACHINES = {b"\x3e\x00": "x86_64", b"\xb7\x00": "aarch64"}  # e_machine, little-endian


@pytest.fixture(scope="module")
def multiarch_base(registry, base_image, tmp_path_factory) -> str:
    """The session's base and Debian's arm64 packages under one tag (an index)."""
    return push_multiarch_base(registry.address, base_image,
                               tmp_path_factory.mktemp("multiarch") / "base")


@pytest.fixture(scope="module")
def arm64_channel():
    """The test conda channel with its linux-aarch64 packages too."""
    from devstack import arm64_python_debs
    from support.conda_channel import build_channel

    return build_channel(arm64_debs=arm64_python_debs())


def _elf_machine(data: bytes) -> str:
    """The CPU an ELF file's bytes are for."""
    return ELF_MACHINES[data[18:20]]


@contextlib.contextmanager
def mlflow_tracking(uri: str) -> Iterator[None]:
    """MLflow's fluent API pointed at ``uri`` for the block."""
    import mlflow

    previous = mlflow.get_tracking_uri()
    mlflow.set_tracking_uri(uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(previous)


def _unpack(client: RegistryClient, repository: str, manifest: dict, root: Path) -> None:
    """The image's layers, in order, as its root filesystem (our layers have no whiteouts)."""
    root.mkdir()
    for layer in manifest["layers"]:
        blob = root.parent / "layer.tar.gz"
        client.blob_to_file(repository, layer["digest"], blob, 1 << 32)
        subprocess.run(["tar", "-xzf", str(blob), "-C", str(root), "--numeric-owner",
                        "--keep-directory-symlink"], check=True)
        blob.unlink()


def _in_arm64_root(root: Path, *argv: str, tracking: str = "",
                   timeout: float = 600) -> subprocess.CompletedProcess:
    """``argv`` run by qemu-aarch64-static chrooted into ``root`` (in /srv/mlflow; this
    machine's network: ``tracking``, the MLflow server)."""
    def enter() -> None:
        os.chroot(root)
        os.chdir("/srv/mlflow")

    return subprocess.run(["/usr/bin/qemu-aarch64-static", *argv], preexec_fn=enter,
                          capture_output=True, text=True, timeout=timeout,
                          env={"PATH": "/opt/env/bin:/usr/bin:/bin", "HOME": "/srv/mlflow",
                               "LANG": "C.UTF-8", "MLFLOW_TRACKING_URI": tracking,
                               "MLFLOW_EXPERIMENT_NAME": "arm64",
                               "MLFLOW_ENABLE_TELEMETRY": "false", "DO_NOT_TRACK": "true"})


def test_the_example_for_two_platforms_trains_on_arm64_under_qemu(
        docker_engine, registry, multiarch_base, no_engine, mlflow_server,
        tmp_path: Path) -> None:
    import mlflow
    client = RegistryClient(registry.address)
    made = build(EXAMPLE, registry, multiarch_base, "arm64/example", "--platform", BOTH,
                 env=no_engine)
    assert made.returncode == 0, made.stderr[-3000:]
    reference = made.stdout.strip()
    tag = reference.rsplit(":", 1)[1]

    # the engine takes the amd64 image of the index (nothing to choose by hand)
    machine = docker_engine.cli("run", "--rm", "--network", "none", reference, "python", "-c",
                                "import platform, sklearn; print(platform.machine())",
                                timeout=600)
    assert machine.stdout.strip() == "x86_64"

    _, manifest = client.manifest("arm64/example", tag, "linux/arm64")
    root = tmp_path / "arm64-root"
    _unpack(client, "arm64/example", manifest, root)
    assert (root / "opt/env/bin/python").readlink() == Path("/usr/bin/python3.11")
    shutil.copy(QEMU, root / "usr/bin/qemu-aarch64-static")
    (root / "srv/mlflow/train.py").write_bytes((EXAMPLE / "train.py").read_bytes())

    # one arm64 interpreter (each start under qemu costs its imports again): where it runs
    # and what it imports, then the training script itself (the runtime step would start it
    # as a child process, which needs binfmt to run an arm64 program: not registered here)
    trained = _in_arm64_root(
        root, "/opt/env/bin/python", "-c",
        "import platform, runpy, sys, numpy, sklearn, mlflow; "
        "print(platform.machine(), numpy.__file__, flush=True); "
        "sys.argv = ['/srv/mlflow/train.py', '--C', '0.5', '--max-iter', '100']; "
        "runpy.run_path('/srv/mlflow/train.py', run_name='__main__')",
        tracking=mlflow_server.url)
    assert trained.returncode == 0, trained.stderr[-3000:]
    probe = trained.stdout.splitlines()[0].split()
    assert probe[0] == "aarch64"
    assert probe[1].startswith("/opt/env/lib/python3.11/site-packages/numpy")
    client = mlflow.MlflowClient(mlflow_server.url)
    [run] = client.search_runs([client.get_experiment_by_name("arm64").experiment_id])
    assert run.data.params == {"C": "0.5", "max_iter": "100"}
    [model] = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and run.data.metrics["accuracy"] > 0.5
    with mlflow_tracking(mlflow_server.url):
        assert "sklearn" in mlflow.models.get_model_info(f"models:/{model.model_id}").flavors


def test_a_conda_environment_for_two_platforms_has_each_platforms_packages(
        docker_engine, registry, multiarch_base, arm64_channel, no_engine, mlflow_server,
        tmp_path: Path) -> None:
    """rattler solves and installs the conda packages for linux-64 and for linux-aarch64,
    uv the pip part for each CPU; the engine runs the amd64 image (the runtime image
    contract, the runtime step logging a model), qemu-user the arm64 one's conda python,
    each with its own CPU's compiled extension; each image records its own."""
    from support.image_checks import check_runtime_image
    from support.runtime_env import PLAIN_MODEL_JOB, run_step

    codeset = tmp_path / "codeset"
    codeset.mkdir()
    (codeset / "MLproject").write_text("name: conda-two\nconda_env: conda.yaml\n"
                                       "entry_points:\n  main:\n    command: python train.py\n")
    (codeset / "train.py").write_text(PLAIN_MODEL_JOB)
    (codeset / "conda.yaml").write_text(yaml.safe_dump({
        "channels": ["conda-forge"],
        "dependencies": ["python=3.11", "pip", "six=1.17", "markupsafe", "probe-data",
                         {"pip": ["idna==3.7"]}]}))
    env = {**no_engine, "CONDA_CHANNEL_ALIAS": arm64_channel.alias_url}
    made = build(codeset, registry, multiarch_base, "arm64/conda", "--platform", BOTH, env=env)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "direct builder does not apply" not in made.stderr
    reference = made.stdout.strip()
    probe = ("import platform, sys, six, idna, markupsafe._speedups as speedups; print(platform."
             "machine(), sys.prefix, sys.version.split()[0], six.__version__, speedups.__file__)")
    labels = check_runtime_image(docker_engine, reference, ("six", "markupsafe", "mlflow"),
                                 ("idna", "mlflow-skinny"))
    assert labels["io.mlflow-steps.strategy"] == "conda"
    # the runtime user reads conda-meta and every package's files (root's, 0644)
    amd64 = docker_engine.cli("run", "--rm", "--network", "none", reference, "sh", "-c",
                              f"python -c '{probe}' && probe-data && stat -c '%a %u %g' "
                              "/opt/env/conda-meta/*.json /opt/env/share/probe-data/probe.txt "
                              "| sort -u", timeout=600, check=False)
    assert amd64.returncode == 0, amd64.stderr[-2000:]
    assert amd64.stdout.split() == [
        "x86_64", "/opt/env", "3.11.2", "1.17.0",
        "/opt/env/lib/python3.11/site-packages/markupsafe/_speedups.cpython-311-x86_64-linux-"
        "gnu.so", "probe", "data", "644", "0", "0"]
    run = run_step(docker_engine, reference, codeset, tmp_path / "results",
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}")
    assert run.returncode == 0, run.stderr[-3000:]
    assert "/models/m-" in (tmp_path / "results" / "model-url").read_text()

    client = RegistryClient(registry.address)
    _, manifest = client.manifest("arm64/conda", reference.rsplit(":", 1)[1], "linux/arm64")
    root = tmp_path / "arm64-root"
    _unpack(client, "arm64/conda", manifest, root)
    assert _elf_machine((root / "opt/env/bin/python3.11").read_bytes()) == "aarch64"
    metas = {meta["name"]: meta for meta in (
        json.loads(path.read_text()) for path in (root / "opt/env/conda-meta").glob("*.json"))}
    assert {metas[name]["subdir"] for name in ("python", "markupsafe", "python_abi")} == {
        "linux-aarch64"}
    lock = (root / "opt/mlflow-steps-build/lock.txt").read_text()
    assert "/linux-aarch64/python-3.11.2-" in lock and "/linux-64/" not in lock
    assert "idna==3.7" in lock.split("# Python distributions")[1]
    pylock = (root / "opt/mlflow-steps-build/pylock.toml").read_text()
    assert 'name = "idna"' in pylock and 'name = "markupsafe"' not in pylock
    shutil.copy(QEMU, root / "usr/bin/qemu-aarch64-static")
    (root / "srv/mlflow").mkdir(parents=True, exist_ok=True)
    arm64 = _in_arm64_root(root, "/opt/env/bin/python", "-c", probe)
    assert arm64.returncode == 0, arm64.stderr[-2000:]
    assert arm64.stdout.split() == [
        "aarch64", "/opt/env", "3.11.2", "1.17.0",
        "/opt/env/lib/python3.11/site-packages/markupsafe/_speedups.cpython-311-aarch64-linux-"
        "gnu.so"]
    tooling = _in_arm64_root(root, "/opt/env/bin/python", "/opt/mlflow-steps/bin/mlflow-steps",
                             "--version")
    assert tooling.returncode == 0, tooling.stderr[-2000:]


def test_conda_and_pixi_locks_give_each_platform_its_locked_packages(
        registry, multiarch_base, arm64_channel, no_engine, tmp_path: Path) -> None:
    """A conda-lock.yml locked for linux-64 and linux-aarch64 builds both images, each
    with exactly its subdir's packages (the lock's URLs), the same digests when rebuilt
    from nothing; a pixi.lock is read per platform too; a lock without one of the platforms
    is refused with one line."""
    from support.conda_channel import IDNA, conda_lock_yaml, solve, write_pixi_lock
    from support.helpers import run_cli

    specs = ["python=3.11", "pip", "six==1.16.0", "markupsafe"]
    records = {subdir: solve(arm64_channel, specs, platforms=(subdir, "noarch"))
               for subdir in ("linux-64", "linux-aarch64")}
    codeset = tmp_path / "locked"
    codeset.mkdir()
    (codeset / "MLproject").write_text("name: locked\nentry_points:\n  main:\n"
                                       "    command: python -c 'import six'\n")
    (codeset / "conda-lock.yml").write_text(conda_lock_yaml(records))
    made = build(codeset, registry, multiarch_base, "arm64/conda-lock", "--platform", BOTH,
                 "--check-reproducible", env=no_engine)
    assert made.returncode == 0, made.stderr[-3000:]
    assert "reproducible: the second build gave the same digest" in made.stderr
    client = RegistryClient(registry.address)
    tag = made.stdout.strip().rsplit(":", 1)[1]
    for platform, subdir, cpu in (("linux/amd64", "linux-64", "x86_64"),
                                  ("linux/arm64", "linux-aarch64", "aarch64")):
        _, manifest = client.manifest("arm64/conda-lock", tag, platform)
        files = layer_files(client, "arm64/conda-lock", manifest)
        metas = [json.loads(data) for name, data in files.items()
                 if name.startswith("opt/env/conda-meta/") and name.endswith(".json")]
        assert sorted(meta["url"] for meta in metas) == sorted(r["url"] for r in records[subdir])
        assert {meta["subdir"] for meta in metas} == {subdir, "noarch"}
        [speedups] = [data for name, data in files.items() if "_speedups.cpython" in name]
        assert _elf_machine(speedups) == cpu, platform

    pixi = tmp_path / "pixi"
    pixi.mkdir()
    (pixi / "MLproject").write_text("name: pixi\nentry_points:\n  main:\n"
                                    "    command: python -c 'import six'\n")
    (pixi / "pixi.toml").write_text(
        '[workspace]\nname = "p"\nchannels = ["conda-forge"]\n'
        'platforms = ["linux-64", "linux-aarch64"]\n[dependencies]\npython = "3.11.*"\n'
        'six = "==1.16.0"\nmarkupsafe = "*"\n[pypi-dependencies]\nidna = "==3.7"\n')
    write_pixi_lock(arm64_channel, specs, pixi / "pixi.lock", pypi=(IDNA,),
                    platforms=("linux-64", "linux-aarch64"))
    explained = run_cli("hash", str(pixi), "--explain", "--platform", BOTH, env=no_engine)
    assert explained.returncode == 0, explained.stderr
    spec = json.loads(explained.stdout.split("\n", 1)[1].rsplit("\n", 2)[0])
    by_platform = spec["locked"]["conda_by_platform"]
    assert {p: {r["url"].split("/")[-2] for r in rs} for p, rs in by_platform.items()} == {
        "linux/amd64": {"linux-64", "noarch"}, "linux/arm64": {"linux-aarch64", "noarch"}}
    assert {p: [r["name"] for r in rs] for p, rs in spec["locked"]["pip_by_platform"].items()
            } == {"linux/amd64": ["idna"], "linux/arm64": ["idna"]}

    (codeset / "conda-lock.yml").write_text(conda_lock_yaml({"linux-64": records["linux-64"]}))
    refused = run_cli("hash", str(codeset), "--platform", BOTH, env=no_engine)
    assert refused.returncode == 2 and refused.stdout == ""
    assert refused.stderr.strip().splitlines()[-1] == (
        "mlflow-steps: error: conda-lock.yml: package: no linux-aarch64 conda packages; lock "
        "for linux-aarch64")
