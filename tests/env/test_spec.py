"""Environment selection, strategy and base image decisions."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from support.helpers import EXAMPLE, REPO

from mlflow_steps.core.errors import StepError
from mlflow_steps.env.spec import BuildOptions, resolve_env, strip_credentials

MLFLOW_CONDA = """name: mlflow-env
channels: [conda-forge]
dependencies:
- python=3.11.7
- pip<=23.2.1
- pip:
  - mlflow==2.14.1
  - scikit-learn==1.5.0
"""
REAL_CONDA = "channels: [conda-forge, defaults]\ndependencies: [python=3.10, numpy=1.26, pip]\n"


def test_example_project_entry_points_are_kept() -> None:
    project, spec = resolve_env(EXAMPLE, BuildOptions())
    main = project.entry_points["main"]
    assert [(p.name, p.type, p.default) for p in main.parameters] == [
        ("C", "float", 1.0), ("max_iter", "int", 200)]
    assert spec.strategy == "pip" and spec.base_image == "python:3.11-slim"


def test_mlflow_written_conda_env_is_built_the_pip_way(codeset) -> None:
    _, spec = resolve_env(codeset({"conda.yaml": MLFLOW_CONDA}), BuildOptions())
    assert spec.strategy == "pip" and spec.python == "3.11"
    assert spec.base_image == "python:3.11-slim"
    assert spec.pip["requirements"] == ["mlflow==2.14.1", "scikit-learn==1.5.0"]
    assert spec.added_requirements == ("boto3",)  # mlflow present: not added again


def test_real_conda_packages_need_no_conda_in_the_base(codeset) -> None:
    _, spec = resolve_env(codeset({"conda.yaml": REAL_CONDA}), BuildOptions())
    assert spec.strategy == "conda" and spec.base_image == "python:3.11-slim"
    _, asked = resolve_env(codeset({"conda.yaml": REAL_CONDA}, "asked"),
                           BuildOptions(miniconda_version="23.5.2-0"))
    assert asked.base_image == "continuumio/miniconda3:23.5.2-0"
    assert spec.conda_channels == ("conda-forge", "defaults")
    assert sorted(spec.conda_dependencies) == ["numpy 1.26.*", "pip", "python 3.10.*"]
    assert spec.added_requirements == ("mlflow-skinny<4", "boto3")


def test_strategy_overrides(codeset) -> None:
    _, forced = resolve_env(codeset({"conda.yaml": MLFLOW_CONDA}),
                            BuildOptions(env_strategy="conda"))
    assert forced.strategy == "conda"
    with pytest.raises(StepError, match="cannot install conda packages"):
        resolve_env(codeset({"conda.yaml": REAL_CONDA}, "b"), BuildOptions(env_strategy="pip"))
    with pytest.raises(StepError, match="env_strategy conda needs"):
        resolve_env(codeset({"requirements.txt": "numpy\n"}, "c"),
                    BuildOptions(env_strategy="conda"))


def test_precedence_lock_then_conda_then_python_env_then_requirements(codeset) -> None:
    files = {"requirements.txt": "numpy\n", "python_env.yaml": "python: '3.12'\n",
             "conda.yaml": REAL_CONDA,
             "conda-lock.yml": (REPO / "tests/data/conda-lock.yml").read_text()}
    order = []
    for index in range(4):
        _, spec = resolve_env(codeset(files, f"cs{index}"), BuildOptions())
        order.append(spec.source)
        files.pop(spec.source)
    assert order == ["conda-lock.yml", "conda.yaml", "python_env.yaml", "requirements.txt"]


def test_lockfile_keeps_linux_packages_only(codeset) -> None:
    lock = (REPO / "tests/data/conda-lock.yml").read_text()
    _, spec = resolve_env(codeset({"conda-lock.yml": lock}), BuildOptions())
    assert spec.strategy == "conda-lock" and spec.python == "3.11.9"
    assert [p["name"] for p in spec.locked_conda] == ["numpy", "python"]
    assert all("linux-64" in p["url"] for p in spec.locked_conda)
    assert [p["name"] for p in spec.locked_pip] == ["six"]


def test_python_env_yaml(codeset) -> None:
    _, spec = resolve_env(codeset({
        "python_env.yaml": "python: 3.12.1\nbuild_dependencies: [pip, setuptools==70.0]\n"
                           "dependencies: [-r requirements.txt, Pandas]\n",
        "requirements.txt": "numpy\n"}), BuildOptions())
    assert spec.base_image == "python:3.12-slim" and spec.python == "3.12"
    assert spec.pip["requirements"] == ["numpy", "pandas"]
    assert sorted(spec.build_requirements) == ["pip", "setuptools==70.0"]


def test_declared_python_env_and_docker_env(codeset) -> None:
    main = "entry_points:\n  main:\n    command: python t.py\n"
    _, spec = resolve_env(codeset({"MLproject": "python_env: envs/py.yaml\n" + main,
                                   "envs/py.yaml": "python: '3.10'\n"}), BuildOptions())
    assert spec.source == "envs/py.yaml" and spec.base_image == "python:3.10-slim"
    _, docker = resolve_env(codeset({"MLproject": "docker_env: {image: corp/ml:1}\n" + main},
                                    "d"), BuildOptions())
    assert docker.base_image == "corp/ml:1" and docker.strategy == "pip"


def test_base_image_input_wins_and_old_python_needs_it(codeset) -> None:
    old = codeset({"python_env.yaml": "python: '3.8'\n"})
    with pytest.raises(StepError, match=r"older than 3\.10"):
        resolve_env(old, BuildOptions())
    _, spec = resolve_env(old, BuildOptions(base_image="localhost:5000/py:3.8"))
    assert spec.base_image == "localhost:5000/py:3.8"


def test_build_index_urls_lose_credentials() -> None:
    assert strip_credentials("https://u:p@mirror.example:8443/simple") == (
        "https://mirror.example:8443/simple")
    options = BuildOptions(index_url="https://u:p@m.example/simple")
    _, spec = resolve_env(EXAMPLE, options)
    assert spec.build_index_urls == ("https://m.example/simple",)
    assert "u:p" not in spec.explain("t")


def test_mlproject_name_is_case_insensitive(codeset, tmp_path: Path) -> None:
    path = codeset({"requirements.txt": "numpy\n"})
    shutil.move(path / "MLproject", path / "mlproject")
    project, _ = resolve_env(path, BuildOptions())
    assert "main" in project.entry_points
