"""What a runtime image records about itself, read back from the registry alone."""

from __future__ import annotations

import re
import shutil
from pathlib import Path

from support.helpers import EXAMPLE, run_cli


def test_inspect_reads_labels_and_lock_from_the_registry(trainer_image, registry,
                                                        tmp_path: Path) -> None:
    """No engine: the labels and the recorded lock come from the registry; the example
    hashes to the image's tag, a changed copy does not."""
    no_engine = {"DOCKER_HOST": f"unix://{tmp_path}/absent.sock", "PATH": "/usr/bin:/bin"}
    import os

    env = {**os.environ, **no_engine}
    tag = trainer_image.rsplit(":", 1)[1]
    result = run_cli("inspect", trainer_image, "--codeset", str(EXAMPLE), env=env)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    fields = {line[:10].strip(): line[11:] for line in lines if not line.startswith("  ")}
    assert fields["env tag"] == tag and fields["strategy"] == "pip"
    assert fields["spec"].startswith(f"sha256:{tag}")
    assert fields["digest"].startswith("sha256:")
    assert re.fullmatch(r".*/library/python:3\.11-slim \(sha256:[0-9a-f]{64}\)", fields["base"])
    locked = [line.strip() for line in lines if line.startswith("  ")]
    assert any(line.startswith("scikit-learn==") for line in locked)
    assert fields["lock"].startswith(f"{len(locked)} packages with hashes")
    assert any(line.startswith("mlflow-steps @ file://") for line in locked)
    assert fields["sbom"].startswith("CycloneDX 1.6, ")
    components = int(fields["sbom"].split(", ")[1].split()[0])
    assert components >= len(locked) - 1  # every installed distribution (pip's own aside)
    assert fields["codeset"].endswith(f"hashes to {tag}: this image is its environment")
    # the PEP 751 record: every installed package but the step tooling's own wheel
    assert fields["pylock"].startswith(f"PEP 751, {len(locked) - 1} packages (")

    changed = Path(shutil.copytree(EXAMPLE, tmp_path / "changed"))
    conda = changed / "conda.yaml"
    conda.write_text(conda.read_text().replace("      - boto3\n", "      - boto3\n      - six\n"))
    other = run_cli("inspect", trainer_image, "--codeset", str(changed), env=env)
    assert other.returncode == 0 and "a different environment" in other.stdout


def test_inspect_refuses_what_is_not_a_runtime_image(base_image, registry) -> None:
    result = run_cli("inspect", base_image)
    assert result.returncode == 2 and len(result.stderr.splitlines()) == 1
    assert "not an mlflow-steps runtime image" in result.stderr
    missing = run_cli("inspect", f"{registry.address}/mlflow/trainer:absent")
    assert missing.returncode == 2 and "not found" in missing.stderr


def test_a_trained_model_traces_back_to_its_image_and_lock(docker_engine, trainer_image,
                                                           registry, mlflow_server,
                                                           tmp_path: Path) -> None:
    """Trained in the image with the workflow's image reference and digest: `trace` goes
    from the model to the run, the pinned image and the lock recorded in it."""
    import os

    import requests
    from support.runtime_env import run_step

    repository, tag = trainer_image.split("/", 1)[1].rsplit(":", 1)
    digest = requests.head(
        f"{registry.url}/v2/{repository}/manifests/{tag}", timeout=30,
        headers={"Accept": "application/vnd.oci.image.manifest.v1+json,"
                           "application/vnd.docker.distribution.manifest.v2+json"}
    ).headers["Docker-Content-Digest"]
    codeset = Path(shutil.copytree(EXAMPLE, tmp_path / "codeset"))
    run = run_step(docker_engine, trainer_image, codeset, tmp_path / "results",
                   f"MLFLOW_TRACKING_URI={mlflow_server.url}",
                   f"MLFLOW_STEPS_IMAGE={trainer_image}", f"MLFLOW_STEPS_IMAGE_DIGEST={digest}",
                   infer_requirements=True)  # what MLflow records is checked against the lock
    assert run.returncode == 0, run.stderr[-3000:]
    model_url = (tmp_path / "results" / "model-url").read_text()
    model_id = model_url.rsplit("/models/", 1)[1].split("/", 1)[0]
    traced = run_cli("trace", f"models:/{model_id}",
                     env={**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url})
    assert traced.returncode == 0, traced.stderr
    fields = {line[:10].strip(): line[11:] for line in traced.stdout.splitlines()
              if not line.startswith("  ")}
    assert fields["env tag"] == tag and "digest" not in fields
    assert fields["image"] == f"{trainer_image.rsplit(':', 1)[0]}@{digest}"
    pulled = docker_engine.cli("pull", fields["image"], check=False)  # one line, pullable
    assert pulled.returncode == 0, pulled.stderr
    locked = [line.strip() for line in traced.stdout.splitlines() if "==" in line]
    assert any(line.startswith("scikit-learn==") for line in locked)
    # what MLflow recorded the model needs is what the image's lock says was installed
    import mlflow

    location = mlflow.MlflowClient(mlflow_server.url).get_logged_model(
        model_id).artifact_location  # not models:/, which goes through the process's registry
    requirements = Path(mlflow.artifacts.download_artifacts(
        artifact_uri=f"{location}/requirements.txt", dst_path=str(tmp_path / "model"),
        tracking_uri=mlflow_server.url))
    required = [line.strip() for line in requirements.read_text().splitlines() if "==" in line]
    assert any(line.startswith("scikit-learn==") for line in required)
    lock_versions = dict(line.split("==", 1) for line in locked)
    for line in required:
        name, version = line.split("==", 1)
        assert lock_versions.get(name, version) == version, (line, lock_versions.get(name))
