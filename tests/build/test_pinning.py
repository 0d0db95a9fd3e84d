"""Lock mode (`--resolve`): the tag follows what would be installed, not what is declared."""

from __future__ import annotations

import os
from pathlib import Path

from support.helpers import run_cli, tiny_wheel, write_codeset
from support.index_server import local_index

PROJECT = "name: pinned\nentry_points:\n  main:\n    command: python -c 'pass'\n"






def publish(root: Path, version: str) -> None:
    """Add mls-pin-probe ``version`` to the index at ``root``."""
    project = root / "simple" / "mls-pin-probe"
    project.mkdir(parents=True, exist_ok=True)
    tiny_wheel(project, name="mls_pin_probe", version=version)
    links = "".join(f'<a href="{w.name}">{w.name}</a>\n' for w in sorted(project.glob("*.whl")))
    (project / "index.html").write_text(f"<html><body>\n{links}</body></html>\n")


def tag(codeset: Path, env: dict[str, str], *args: str) -> str:
    result = run_cli("hash", str(codeset), *args, env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip().splitlines()[-1]


def explain(codeset: Path, env: dict[str, str]) -> str:
    result = run_cli("hash", str(codeset), "--resolve", "--explain", env=env)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout.strip()


def test_a_new_upstream_release_is_a_new_tag_only_in_lock_mode(tmp_path: Path) -> None:
    codeset = write_codeset(tmp_path / "codeset", {"MLproject": PROJECT,
                                                   "requirements.txt": "mls-pin-probe\n"})
    root = tmp_path / "index"
    publish(root, "1.0")
    with local_index(root) as url:
        env = {**os.environ, "PIP_EXTRA_INDEX_URL": url}
        # --explain prints the tag last: one resolution gives the tag and the pins
        declared, explained = tag(codeset, env), explain(codeset, env)
        locked = explained.splitlines()[-1]
        assert locked != declared
        assert '"mls-pin-probe==1.0"' in explained and '"boto3==' in explained
        assert tag(codeset, env, "--resolve") == locked  # same index, same pins
        publish(root, "1.1")
        assert tag(codeset, env) == declared  # the default reuses the old image
        newer = explain(codeset, env)
        assert '"mls-pin-probe==1.1"' in newer
        assert newer.splitlines()[-1] not in (locked, declared)


def test_lock_mode_refusals_are_one_line(tmp_path: Path) -> None:
    conda = write_codeset(tmp_path / "conda", {
        "MLproject": PROJECT + "conda_env: conda.yaml\n",
        "conda.yaml": "name: c\nchannels: [conda-forge]\ndependencies:\n  - python=3.11\n"
                      "  - numpy\n"})
    missing = write_codeset(tmp_path / "missing", {
        "MLproject": PROJECT, "requirements.txt": "mls-pin-probe-that-does-not-exist==9.9\n"})
    root = tmp_path / "index"
    publish(root, "1.0")
    with local_index(root) as url:
        env = {**os.environ, "PIP_EXTRA_INDEX_URL": url}
        for codeset, expected in ((conda, "applies to pip environments; a conda environment"),
                                  (missing, "the requirements do not resolve: ")):
            result = run_cli("hash", str(codeset), "--resolve", env=env)
            assert result.returncode == 2, result.stderr
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and "Traceback" not in result.stderr
            assert lines[0].startswith("mlflow-steps: error: input: resolve: " + expected), lines
