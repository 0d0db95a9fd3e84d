"""A uv project (pyproject.toml + uv.lock) built into an image: exactly the locked versions
(a newer release on the index is not taken, a Windows-only package not installed), hash
checked, MLflow and boto3 added for the step tooling; by the direct builder with no engine
and by Docker, the locked packages in their layers without a resolve stage."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import tomllib
from packaging.pylock import Pylock
from support.helpers import run_cli
from support.locks import DEPENDENCIES, pypi_project, uv_project
from support.synthetic_base import build

from mlflow_steps.build.inspect import read_image
from mlflow_steps.env.installer import uv_binary
from mlflow_steps.image.client import RegistryClient


def _locked_versions(reference: str, registry) -> dict[str, str]:
    """name -> version of what the image recorded as installed (the tooling's local wheel,
    named by its path, left out)."""
    record = read_image(reference, RegistryClient(registry.address))
    return dict(line.split("==", 1) for line in record.packages if "==" in line)


def _uv(*args: str) -> str:
    result = subprocess.run([str(uv_binary()), *args], capture_output=True, text=True,
                            timeout=300, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def test_the_direct_builder_installs_exactly_the_lock(registry, synthetic_base, no_engine,
                                                      warm_cache, lock_index: str,
                                                      tmp_path: Path) -> None:
    project = uv_project(tmp_path / "uv", lock_index, DEPENDENCIES, local_wheel=True)
    env = {**no_engine, "PIP_EXTRA_INDEX_URL": lock_index,
           "MLFLOW_STEPS_CACHE": warm_cache(tmp_path / "cache")}
    result = build(project, registry, synthetic_base, "locked/direct", env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "does not apply" not in result.stderr
    reference = result.stdout.strip()
    versions = _locked_versions(reference, registry)
    assert versions["mls-lock-a"] == "1.0" and "mls-lock-win" not in versions
    # the codeset's wheel, hash-checked, installed from the env files' wheels/ (by its path)
    record = read_image(reference, RegistryClient(registry.address))
    assert any(line.startswith("mls-local @ file:///opt/mlflow-steps-build/env/wheels/"
                               "mls_local-1.0-py3-none-any.whl") for line in record.packages)
    assert "mlflow-skinny" in versions and "boto3" in versions

    # the image's PEP 751 record: valid, and on a plain machine it installs the same set
    written = tmp_path / "pylock.toml"
    shown = run_cli("inspect", reference, "--write-pylock", str(written), env=no_engine)
    assert shown.returncode == 0, shown.stderr
    [line] = [x for x in shown.stdout.splitlines() if x.startswith("pylock ")]
    assert f"PEP 751, {len(versions) + 1} packages" in line  # and mls-local
    Pylock.from_dict(tomllib.loads(written.read_text()))  # validates against the PEP
    # the codeset's wheel is named by its path in the image: a plain machine lacks it
    head, *blocks = written.read_text().split("\n[[packages]]\n")
    [local] = [block for block in blocks if block.startswith('name = "mls-local"')]
    assert "/opt/mlflow-steps-build/env/wheels/mls_local-1.0-py3-none-any.whl" in local
    plain = tmp_path / "plain-lock" / "pylock.toml"
    plain.parent.mkdir()
    plain.write_text("\n[[packages]]\n".join([head, *(b for b in blocks if b != local)]))
    venv = tmp_path / "plain"
    _uv("venv", "--quiet", "--python", sys.executable, str(venv))
    _uv("pip", "install", "--quiet", "--python", str(venv / "bin" / "python"), "-r",
        str(plain))
    freeze = _uv("pip", "freeze", "--python", str(venv / "bin" / "python"))
    assert dict(x.split("==", 1) for x in freeze.split()) == versions


def test_docker_installs_exactly_the_lock(docker_engine, registry, base_image,
                                          tmp_path: Path) -> None:
    """Locked against PyPI as of mid-2021 (the build's engine reaches PyPI, not a loopback
    index): six 1.16.0 though newer ones exist, colorama only on Windows."""
    project = pypi_project(tmp_path / "uv", '"six>=1.15", "colorama; sys_platform == '
                           "'win32'\"", exclude_newer="2021-06-01T00:00:00Z")
    context = tmp_path / "context"
    rendered = run_cli("render", str(project), "--base-image", base_image, "-o", str(context))
    assert rendered.returncode == 0, rendered.stderr
    dockerfile = (context / "Dockerfile").read_text()
    assert " AS resolve" not in dockerfile and "uv pip compile" not in dockerfile.split(
        "# Step tooling")[0]
    layer_files = {f.name: f.read_text() for f in (context / "layers").iterdir()}
    [(name, text)] = [(n, t) for n, t in layer_files.items() if t]
    assert name == "rest.txt" and text.startswith("six==1.16.0 --hash=sha256:")
    result = run_cli("build", str(project), "--builder", "docker", "--registry",
                     registry.address, "--base-image", base_image, "--repository",
                     "locked/docker", env={**os.environ, **docker_engine.env()})
    assert result.returncode == 0, result.stderr[-3000:]
    versions = _locked_versions(result.stdout.strip(), registry)
    assert versions["six"] == "1.16.0" and "colorama" not in versions
    assert "mlflow-skinny" in versions and "boto3" in versions
    shown = run_cli("inspect", result.stdout.strip())
    assert shown.returncode == 0 and f"PEP 751, {len(versions)} packages" in shown.stdout


def test_the_kaniko_plan_of_a_locked_project_carries_its_groups(registry, lock_index: str,
                                                                tmp_path: Path) -> None:
    """The cluster plan's context is the Dockerfile path's: the lock's packages of the asked
    dependency groups in their layers, hashed as `hash` does with the same input."""
    project = uv_project(tmp_path / "uv", lock_index, '"mls-lock-a==1.0"',
                         groups='dev = ["mls-lock-b"]\ntrain = []')
    env = {**os.environ, "PIP_CONFIG_FILE": os.devnull, "FUSEML_DEPENDENCY_GROUPS": "train"}
    plan = tmp_path / "plan"
    prepared = run_cli("build", str(project), "--stage", "prepare", "--executor", "kaniko",
                       "--plan-dir", str(plan), "--registry", registry.address,
                       "--repository", "locked/kaniko", "--base-image", "python:3.11-slim",
                       env=env)
    assert prepared.returncode == 0, prepared.stderr
    tag = run_cli("hash", str(project), "--base-image", "python:3.11-slim", env=env)
    assert prepared.stdout.startswith(
        f"build: {registry.address}/locked/kaniko:{tag.stdout.strip()} missing, plan kaniko")
    context = plan / "context"
    pins = "".join(f.read_text() for f in (context / "layers").iterdir())
    assert pins.startswith("mls-lock-a==1.0 --hash=sha256:") and "mls-lock-b" not in pins
    assert " AS resolve" not in (context / "Dockerfile").read_text()
