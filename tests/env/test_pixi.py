"""pixi projects: pixi.lock (written here by rattler, pixi's lock library, from packages solved
against the test channel) with pixi.toml or pyproject.toml's [tool.pixi]; the tag is the
hash of the conda and PyPI packages it locks for linux-64, the manifest checked against it."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from support.conda_channel import IDNA
from support.helpers import MINIMAL_MLPROJECT, run_cli, write_codeset

PIXI_TOML = """\
[workspace]
name = "px"
channels = ["conda-forge"]
platforms = ["linux-64"]

[dependencies]
python = "3.11.*"
six = "==1.16.0"

[target.win-64.dependencies]
pywin32 = "*"

[pypi-dependencies]
idna = ">=3"
"""


@pytest.fixture(scope="module")
def pixi_lock(conda_channel, tmp_path_factory: pytest.TempPathFactory) -> str:
    from support.conda_channel import write_pixi_lock

    path = tmp_path_factory.mktemp("pixi") / "pixi.lock"
    write_pixi_lock(conda_channel, ["python=3.11", "six==1.16.0"], path, pypi=(IDNA,))
    return path.read_text()


def hashed(codeset: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli("hash", str(codeset), *args, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return result.returncode, result.stdout, result.stderr


def project(tmp_path: Path, lock: str, **files: str) -> Path:
    return write_codeset(tmp_path / "px", {"MLproject": MINIMAL_MLPROJECT, "pixi.toml": PIXI_TOML,
                                           "pixi.lock": lock, **files})


def refusal(codeset: Path) -> str:
    code, out, err = hashed(codeset)
    assert code == 2 and out == "", err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    return err.strip()


def test_a_pixi_project_is_its_locked_set(pixi_lock: str, tmp_path: Path) -> None:
    """Before uv.lock and requirements.txt; the conda and PyPI packages with their hashes;
    reordering and reformatting the lock keep the tag, another artifact hash changes it."""
    codeset = project(tmp_path, pixi_lock, **{"requirements.txt": "numpy\n", "uv.lock": ""})
    code, explained, err = hashed(codeset, "--explain")
    assert code == 0, err
    assert explained.startswith("# environment: pixi.lock (a pixi lock (conda and PyPI) comes")
    tag = explained.strip().splitlines()[-1]
    for text in ('"strategy": "conda-lock"', '"name": "six"', '"version": "1.16.0"',
                 IDNA[2], IDNA[3], "python-3.11.2-"):
        assert text in explained
    assert "numpy" not in explained

    data = yaml.safe_load(pixi_lock)
    data["packages"].reverse()
    (codeset / "pixi.lock").write_text(yaml.safe_dump(data, sort_keys=True, width=200))
    assert hashed(codeset)[1].strip() == tag
    (codeset / "pixi.lock").write_text(pixi_lock.replace(IDNA[3], "0" * 64))
    assert hashed(codeset)[1].strip() not in ("", tag)


def test_pyproject_with_tool_pixi_is_a_manifest(pixi_lock: str, tmp_path: Path) -> None:
    """[tool.pixi.dependencies] and [project] dependencies (a Windows-only one is not asked
    of the lock); the project itself (the codeset, editable in pixi) is not in the image."""
    lock = yaml.safe_load(pixi_lock)
    lock["environments"]["default"]["packages"]["linux-64"].append({"pypi": "."})
    lock["packages"].append({"pypi": ".", "name": "px", "version": "0.1.0",
                             "sha256": "1" * 64})
    codeset = write_codeset(tmp_path / "pp", {
        "MLproject": MINIMAL_MLPROJECT, "pixi.lock": yaml.safe_dump(lock),
        "pyproject.toml": '[project]\nname = "px"\nversion = "0.1.0"\ndependencies = '
                          '["idna>=3,<4", "colorama; sys_platform == \'win32\'"]\n\n'
                          '[tool.pixi.workspace]\nchannels = ["conda-forge"]\n'
                          'platforms = ["linux-64"]\n\n[tool.pixi.dependencies]\n'
                          'python = ">=3.11,<3.12"\n'})
    code, explained, err = hashed(codeset, "--explain")
    assert code == 0, err
    assert IDNA[2] in explained and '"name": "px"' not in explained
    (codeset / "pyproject.toml").write_text(
        (codeset / "pyproject.toml").read_text().replace("idna>=3,<4", "idna>=4"))
    assert refusal(codeset) == (
        "mlflow-steps: error: pixi.lock: does not satisfy pyproject.toml any more "
        "(project.dependencies[0]: no locked package matches 'idna>=4'); run `pixi lock`")


def test_dependency_groups_names_the_pixi_environment(pixi_lock: str, tmp_path: Path) -> None:
    """Like `pixi install -e NAME`: the one environment to install instead of `default`."""
    codeset = project(tmp_path, pixi_lock.replace("  default:", "  gpu:", 1))
    code, out, err = hashed(codeset, "--dependency-groups", "gpu")
    assert code == 0 and out.strip(), err
    default = project(tmp_path / "default", pixi_lock)
    assert hashed(default)[1] == out  # the same packages: the same tag
    code, out, err = hashed(codeset, "--dependency-groups", "gpu,cpu")
    assert (code, out) == (2, "") and err.strip() == (
        "mlflow-steps: error: input: dependency_groups: a pixi.lock installs one of its "
        "environments; name one, not 2")


@pytest.mark.parametrize(("change", "expected"), [
    (lambda toml, lock: (toml.replace('six = "==1.16.0"', 'six = ">=1.17"'), lock),
     "pixi.lock: does not satisfy pixi.toml any more (dependencies.six: no locked package "
     "matches 'six >=1.17'); run `pixi lock`"),
    (lambda toml, lock: (toml + 'requests = "*"\n', lock),
     "pixi.lock: does not satisfy pixi.toml any more (pypi-dependencies.requests: no locked "
     "package matches 'requests'); run `pixi lock`"),
    (lambda toml, lock: (None, lock), "pixi.lock: pixi.lock without pixi.toml"),
    (lambda toml, lock: (toml, lock.replace("  default:", "  gpu:", 1)),
     "pixi.lock: environments: no 'default' environment (it has: gpu)"),
    (lambda toml, lock: (toml, lock.replace("- name: linux-64", "- name: osx-arm64")
                         .replace("      linux-64:", "      osx-arm64:")),
     "pixi.lock: environments.default.packages: no linux-64 packages (locked for: "
     "osx-arm64); add linux-64 to the "
     "workspace's platforms and run `pixi lock`"),
    (lambda toml, lock: (toml, lock.replace("- pypi: https://files", "- pypi: ../wheels/x/")),
     "pixi.lock: packages.idna: '../wheels/x/"),
    (lambda toml, lock: (toml, "version: 99\n" + lock.split("\n", 1)[1]),
     "pixi.lock: reading it failed: "),
    (lambda toml, lock: (toml, "version: [\n"), "pixi.lock: reading it failed: "),
    (lambda toml, lock: ("[dependencies\n", lock), "pixi.toml: not valid TOML"),
], ids=["conda-spec", "pypi-dependency", "no-manifest", "no-default", "no-linux-64",
        "local-path", "lock-version", "bad-yaml", "bad-toml"])
def test_bad_pixi_projects_are_one_line(pixi_lock: str, tmp_path: Path, change,
                                        expected: str) -> None:
    toml, lock = change(PIXI_TOML, pixi_lock)
    codeset = project(tmp_path, lock)
    if toml is None:
        (codeset / "pixi.toml").unlink()
    else:
        (codeset / "pixi.toml").write_text(toml)
    assert refusal(codeset).startswith(f"mlflow-steps: error: {expected}")
