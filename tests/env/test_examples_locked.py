"""The locked examples: examples/uv-project (pyproject.toml + uv.lock) and
examples/pylock-project (that lock exported to PEP 751) are one environment, so one tag.
Resolving the uv project runs `uv export --locked`, which refuses a uv.lock that no longer
satisfies pyproject.toml: a stale example fails here. No network, no engine."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from support.helpers import REPO

from mlflow_steps.env.hashing import env_tag
from mlflow_steps.env.spec import BuildOptions, EnvSpec, resolve_env

UV_PROJECT = REPO / "examples" / "uv-project"
PYLOCK_PROJECT = REPO / "examples" / "pylock-project"
PUBLIC_HOSTS = {"pypi.org", "files.pythonhosted.org"}


def spec(codeset: Path) -> EnvSpec:
    _, resolved = resolve_env(codeset, BuildOptions())
    return resolved


def test_the_uv_example_and_its_pylock_export_are_one_environment() -> None:
    uv_spec, pylock_spec = spec(UV_PROJECT), spec(PYLOCK_PROJECT)
    assert (uv_spec.source, pylock_spec.source) == ("uv.lock", "pylock.toml")
    assert uv_spec.reason.startswith("a uv lock comes before")
    assert pylock_spec.reason.startswith("a PEP 751 lock comes before")
    assert uv_spec.locked_pip == pylock_spec.locked_pip
    assert env_tag(uv_spec) == env_tag(pylock_spec)

    # .python-version picks the image; the lock brings MLflow and boto3: nothing added
    assert uv_spec.python == "3.11" and uv_spec.base_image == "python:3.11-slim"
    assert uv_spec.strategy == "pip" and not uv_spec.pip
    locked = {package["name"]: package for package in uv_spec.locked_pip}
    assert "mlflow-skinny" in locked and "boto3" in locked and "scikit-learn" in locked
    assert "mlflow" not in locked and "uv-project" not in locked  # the project left out
    assert uv_spec.added_requirements == ()
    assert all(package["version"] and package["hashes"]
               and package["index"] == "https://pypi.org/simple"
               for package in locked.values())


@pytest.mark.parametrize("lock", [UV_PROJECT / "uv.lock", PYLOCK_PROJECT / "pylock.toml"],
                         ids=["uv.lock", "pylock.toml"])
def test_the_uv_example_locks_name_only_pypi(lock: Path) -> None:
    """Locked against PyPI only (not a mirror or a local index of the machine that locked)."""
    hosts = set(re.findall(r"\b[a-z][a-z+]*://([^/\"'\s]+)", lock.read_text()))
    assert hosts == PUBLIC_HOSTS
