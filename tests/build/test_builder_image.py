"""The builder step image, run the way a user runs it on one machine."""

from __future__ import annotations

from pathlib import Path

import requests
from support.helpers import small_codeset
from support.image_checks import check_runtime_image

from mlflow_steps.build.builder_plan import DIRECT_CACHE_MOUNT, DIRECT_ENV, DIRECT_USER

SYSTEM_CA = "/etc/ssl/certs/ca-certificates.crt"
MANIFEST_TYPES = ("application/vnd.docker.distribution.manifest.v2+json,"
                  "application/vnd.oci.image.manifest.v1+json")


def test_builder_image_builds_and_pushes(docker_engine, registry, base_image, builder_image,
                                         tmp_path: Path) -> None:
    """Docker through the engine's socket (a small codeset: the trainer image and the
    workflows build the example)."""
    codeset = small_codeset(tmp_path)
    results = tmp_path / "results"
    results.mkdir()
    socket = docker_engine.host.removeprefix("unix://")
    run = docker_engine.cli(
        "run", "--rm", "--network", "host",
        "-v", f"{socket}:/var/run/docker.sock", "-v", f"{codeset}:/project:ro",
        "-v", f"{results}:/tekton/results", "-v", f"{SYSTEM_CA}:/certs/ca.pem:ro",
        "-e", "PIP_CERT=/certs/ca.pem", "-e", "TASK_RESULT=image",
        "-e", f"FUSEML_REGISTRY={registry.address}", "-e", f"FUSEML_BASE_IMAGE={base_image}",
        "-e", "FUSEML_REPOSITORY=image-test/trainer", "-e", "FUSEML_VERBOSE=true",
        "-e", "FUSEML_BUILDER=docker", builder_image, check=False, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    reference = (results / "image").read_text()
    assert run.stdout.strip() == reference
    repository, tag = reference.split("/", 1)[1].rsplit(":", 1)
    assert repository == "image-test/trainer"
    assert "[docker] " in run.stderr
    manifest = requests.head(f"{registry.url}/v2/{repository}/manifests/{tag}", timeout=10,
                             headers={"Accept": MANIFEST_TYPES})
    assert manifest.status_code == 200

    # The same image, run again: the tag exists, so it skips.
    again = docker_engine.cli(
        "run", "--rm", "--network", "host", "-v", f"{codeset}:/project:ro",
        "-e", f"FUSEML_REGISTRY={registry.address}", "-e", f"FUSEML_BASE_IMAGE={base_image}",
        "-e", "FUSEML_REPOSITORY=image-test/trainer", builder_image, check=False, timeout=300)
    assert again.returncode == 0, again.stderr[-2000:]
    assert again.stdout.strip() == reference
    assert "exists" in again.stderr


def test_builder_image_builds_unprivileged_without_an_engine(docker_engine, registry, base_image,
                                                             builder_image,
                                                             tmp_path: Path) -> None:
    """The in-cluster engine-free step as the Tekton export runs it: our image as user 1000,
    every capability dropped, no privilege escalation, no engine socket (a small codeset:
    the workflows build, train and serve the example with it)."""
    codeset = small_codeset(tmp_path)
    results = tmp_path / "results"
    results.mkdir(mode=0o777)
    results.chmod(0o777)
    cache_env = [item for key, value in DIRECT_ENV.items() for item in ("-e", f"{key}={value}")]
    run = docker_engine.cli(
        "run", "--rm", "--network", "host", "--user", f"{DIRECT_USER}:{DIRECT_USER}",
        "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "--tmpfs", f"{DIRECT_CACHE_MOUNT}:rw,exec,mode=1777",
        "-v", f"{codeset}:/project:ro", "-v", f"{results}:/tekton/results",
        "-v", f"{SYSTEM_CA}:/certs/ca.pem:ro", "-e", "PIP_CERT=/certs/ca.pem", *cache_env,
        "-e", "TASK_RESULT=image", "-e", "TASK_RESULT_DIGEST=digest",
        "-e", f"FUSEML_REGISTRY={registry.address}", "-e", f"FUSEML_BASE_IMAGE={base_image}",
        "-e", "FUSEML_REPOSITORY=image-test/direct", builder_image, "--builder", "direct",
        check=False, timeout=900)
    assert run.returncode == 0, run.stderr[-3000:]
    assert "[direct] " in run.stderr and "does not apply" not in run.stderr
    reference = (results / "image").read_text()
    assert (results / "digest").read_text().startswith("sha256:")
    check_runtime_image(docker_engine, reference, imports=("six",), locked=("six",))
