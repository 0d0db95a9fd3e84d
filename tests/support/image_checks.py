"""The one runtime-image test every build path must pass (Docker, Buildah, Kaniko), and
what a pushed image holds."""

from __future__ import annotations

import gzip
import io
import json
import subprocess
import tarfile
from pathlib import Path

from mlflow_steps.image.client import RegistryClient

EXAMPLE_IMPORTS = ("sklearn", "mlflow", "boto3")
EXAMPLE_LOCKED = ("scikit-learn", "mlflow-skinny")


def runtime_probe(imports: tuple[str, ...], locked: tuple[str, ...]) -> str:
    """The shell check run in the image: ``imports`` import (the first one's bytecode
    compiled at build time, its tests/ not shipped) and the lock names each of ``locked``."""
    first = imports[0]
    return (
        "id -u && pwd && stat -c %u . && "
        f"python -c 'import {', '.join(imports)}' && "
        f"cached=$(python -c 'import {first}; print({first}.__cached__)') && "
        "test -e $cached && test ! -e $(dirname $(dirname $cached))/tests && "
        "/opt/mlflow-steps/bin/mlflow-steps --version && "
        # what was installed, recorded: the lock names them with versions
        + "".join(f"grep -q '^{name}==' /opt/mlflow-steps-build/lock.txt && "
                  for name in locked) +
        # and described: a CycloneDX SBOM with components
        "python -c 'import json, sys; assert json.load(open(sys.argv[1]))[sys.argv[2]]' "
        "/opt/mlflow-steps-build/sbom.cdx.json components && "
        "test ! -e /etc/pip.conf && test ! -e /run/secrets/pip-ca.pem && "
        "test ! -d /root/.cache/pip && test ! -e /mlflow-steps-build && test ! -e /kaniko"
    )


def check_runtime_image(engine, reference: str, imports: tuple[str, ...] = EXAMPLE_IMPORTS,
                        locked: tuple[str, ...] = EXAMPLE_LOCKED) -> dict[str, str]:
    """Pull and run ``reference`` as a fresh consumer does; return its labels.

    The tooling entry point runs, the environment imports (``imports``; the lock names
    ``locked``; the example's by default), the user is 1000, the WORKDIR
    exists and belongs to that user, no build-time secret or builder path is in the image,
    and the labels name the environment tag.
    """
    engine.cli("rmi", reference, check=False)
    ran = engine.cli("run", "--rm", "--network", "host", reference, "sh", "-c",
                     runtime_probe(imports, locked),
                     check=False, timeout=300)
    assert ran.returncode == 0, ran.stdout + ran.stderr
    uid, workdir, owner = ran.stdout.splitlines()[:3]
    assert (uid, owner) == ("1000", "1000") and workdir == "/srv/mlflow"
    config = json.loads(engine.cli("image", "inspect", reference).stdout)[0]["Config"]
    labels = config["Labels"] or {}
    assert labels["io.mlflow-steps.env-tag"] == reference.rsplit(":", 1)[1]
    assert labels["io.mlflow-steps.spec-digest"].startswith(
        "sha256:" + labels["io.mlflow-steps.env-tag"])
    assert labels["io.mlflow-steps.lock"] == "/opt/mlflow-steps-build/lock.txt"
    assert labels["io.mlflow-steps.sbom"] == "/opt/mlflow-steps-build/sbom.cdx.json"
    assert labels["org.opencontainers.image.base.digest"].startswith("sha256:")
    assert labels["io.mlflow-steps.tooling-version"] and \
        labels["org.opencontainers.image.base.name"]
    assert labels["io.mlflow-steps.strategy"] in ("pip", "conda", "conda-lock")
    assert config["User"] == "1000" and config["WorkingDir"] == "/srv/mlflow"
    return labels


def scan_pushed_image(reference: str, destination: Path, needles: list[str]) -> list[str]:
    """Copy the image out of the registry with skopeo and search every blob for needles."""
    subprocess.run(["skopeo", "copy", "--src-tls-verify=false", f"docker://{reference}",
                    f"dir:{destination}"], check=True, capture_output=True, timeout=300)
    found = []
    for blob in destination.iterdir():
        data = blob.read_bytes()
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
        found += [needle for needle in needles if needle.encode() in data]
    return found


def layer_files(client: RegistryClient, repository: str, manifest: dict) -> dict[str, bytes]:
    """The regular files of the image's own layers (past its one-layer base's) → their
    bytes."""
    files: dict[str, bytes] = {}
    for layer in manifest["layers"][1:]:
        data = client.blob(repository, layer["digest"], 1 << 30)
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
            for member in tar:
                if member.isfile():
                    handle = tar.extractfile(member)
                    files[member.name] = handle.read() if handle else b""
    return files
