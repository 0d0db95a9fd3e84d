"""The example built for linux/amd64 and linux/arm64 by the direct builder on this amd64
machine, from a base index whose arm64 image is made of Debian's arm64 packages: the engine
pulls the amd64 image through the index, and the arm64 image's own Python imports the
environment and trains the example under qemu-user (run explicitly, no binfmt)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

from multiarch_base import push_multiarch_base
from support.helpers import EXAMPLE
from support.synthetic_base import build

from mlflow_steps.image.client import RegistryClient

QEMU = shutil.which("qemu-aarch64-static") or "/usr/bin/qemu-aarch64-static"


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
        docker_engine, registry, base_image, no_engine, mlflow_server, tmp_path: Path) -> None:
    import mlflow
    client = RegistryClient(registry.address)
    base = push_multiarch_base(registry.address, base_image, tmp_path / "base")
    made = build(EXAMPLE, registry, base, "arm64/example", "--platform",
                 "linux/amd64,linux/arm64", env=no_engine)
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

    probe = _in_arm64_root(root, "/opt/env/bin/python", "-c",
                           "import platform, sklearn, numpy, mlflow; print(platform.machine(), "
                           "numpy.__file__)")
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert probe.stdout.split()[0] == "aarch64"
    assert probe.stdout.split()[1].startswith("/opt/env/lib/python3.11/site-packages/numpy")
    # the training script itself (the runtime step would start it as a child process,
    # which needs binfmt to run an arm64 program: not registered here)
    trained = _in_arm64_root(root, "/opt/env/bin/python", "/srv/mlflow/train.py", "--C", "0.5",
                             "--max-iter", "100", tracking=mlflow_server.url)
    assert trained.returncode == 0, trained.stderr[-3000:]
    client = mlflow.MlflowClient(mlflow_server.url)
    [run] = client.search_runs([client.get_experiment_by_name("arm64").experiment_id])
    assert run.data.params == {"C": "0.5", "max_iter": "100"}
    [model] = client.search_logged_models([run.info.experiment_id])
    assert model.source_run_id == run.info.run_id and run.data.metrics["accuracy"] > 0.5
    with mlflow_tracking(mlflow_server.url):
        assert "sklearn" in mlflow.models.get_model_info(f"models:/{model.model_id}").flavors
