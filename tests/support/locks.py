"""Locked projects made by real uv against a loopback index of small wheels."""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from mlflow_steps.env.installer import uv_binary
from support.helpers import MINIMAL_MLPROJECT, make_wheel, write_codeset
from support.index_server import local_index

# mls-lock-a 1.0 locked while 2.0 is on the index too; mls-lock-win only on Windows
DEPENDENCIES = '"mls-lock-a==1.0", "mls-lock-win; sys_platform == \'win32\'"'
WHEELS = (("mls_lock_a", "1.0"), ("mls_lock_a", "2.0"), ("mls_lock_b", "1.0"),
          ("mls_lock_win", "1.0"))


def publish(root: Path) -> None:
    """A PEP 503 index of WHEELS at ``root``, with the sha256 fragments real indexes give."""
    for name, version in WHEELS:
        project = root / "simple" / name.replace("_", "-")
        project.mkdir(parents=True, exist_ok=True)
        make_wheel(project, name, version, {f"{name}/__init__.py": f"V = {version!r}\n".encode()})
    for project in (root / "simple").iterdir():
        links = "".join(
            f'<a href="{w.name}#sha256={hashlib.sha256(w.read_bytes()).hexdigest()}">'
            f"{w.name}</a>\n" for w in sorted(project.glob("*.whl")))
        (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


@pytest.fixture(scope="module")
def lock_index(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    root = tmp_path_factory.mktemp("lock-index")
    publish(root)
    with local_index(root) as url:
        yield url


def uv(*args: str, cwd: Path) -> str:
    """Real uv, with a cache of its own (no index page cached from elsewhere)."""
    env = {**os.environ, "UV_CACHE_DIR": str(cwd / ".uv-cache")}
    result = subprocess.run([str(uv_binary()), *args], cwd=cwd, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout


LOCAL_WHEEL = "wheels/mls_local-1.0-py3-none-any.whl"


def uv_project(directory: Path, index: str, dependencies: str, groups: str = "",
               local_wheel: bool = False) -> Path:
    """An MLflow project on pyproject.toml + uv.lock, locked by uv against ``index``
    (``groups``: the lines of its [dependency-groups] table; ``local_wheel``: mls-local too,
    a wheel of the codeset, LOCAL_WHEEL)."""
    if local_wheel:
        dependencies += ', "mls-local"'
    codeset = write_codeset(directory, {"MLproject": MINIMAL_MLPROJECT, "pyproject.toml": (
        f'[project]\nname = "demo"\nversion = "0.1"\nrequires-python = ">=3.10"\n'
        f"dependencies = [{dependencies}]\n\n"
        + (f"[dependency-groups]\n{groups}\n" if groups else "")
        + (f'[tool.uv.sources]\nmls-local = {{ path = "{LOCAL_WHEEL}" }}\n\n'
           if local_wheel else "")
        + f'[[tool.uv.index]]\nurl = "{index}"\ndefault = true\n')})
    if local_wheel:
        (codeset / LOCAL_WHEEL).parent.mkdir()
        make_wheel((codeset / LOCAL_WHEEL).parent, "mls_local", "1.0",
                   {"mls_local/__init__.py": b"V = 'local'\n"})
    uv("lock", "--quiet", cwd=codeset)
    (codeset / ".uv-cache").rename(directory.parent / f".uv-cache-{directory.name}")
    return codeset




def pypi_project(directory: Path, dependencies: str, exclude_newer: str) -> Path:
    """An MLflow project on pyproject.toml + uv.lock, locked by uv against PyPI as it was
    at ``exclude_newer`` (for builds whose engine cannot reach a loopback index)."""
    codeset = write_codeset(directory, {"MLproject": MINIMAL_MLPROJECT, "pyproject.toml": (
        f'[project]\nname = "demo"\nversion = "0.1"\nrequires-python = ">=3.10"\n'
        f"dependencies = [{dependencies}]\n\n[tool.uv]\nexclude-newer = \"{exclude_newer}\"\n")})
    uv("lock", "--quiet", cwd=codeset)
    (codeset / ".uv-cache").rename(directory.parent / f".uv-cache-{directory.name}")
    return codeset
