"""Locked sources: pyproject.toml + uv.lock and PEP 751 pylock.toml, made here by real uv
against a loopback index; the tag is the hash of the locked set for the image's platform."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path

import pytest
from support.helpers import MINIMAL_MLPROJECT, make_wheel, run_cli, write_codeset
from support.locks import DEPENDENCIES, uv, uv_project


def hashed(codeset: Path, *args: str) -> tuple[int, str, str]:
    result = run_cli("hash", str(codeset), *args, env={**os.environ, "PIP_CONFIG_FILE": os.devnull})
    return result.returncode, result.stdout, result.stderr


def test_a_uv_project_is_its_locked_set_for_the_image(lock_index: str, tmp_path: Path) -> None:
    """The tag hashes what uv.lock installs on Linux (the Windows-only package is not in it),
    at the locked version (2.0 is on the index too); `--explain` says which file and why;
    the PEP 751 export of the same lock is the same set, so the same tag."""
    project = uv_project(tmp_path / "uv", lock_index, DEPENDENCIES)
    code, explained, err = hashed(project, "--explain")
    assert code == 0, err
    assert explained.startswith("# environment: uv.lock (a uv lock comes before unlocked")
    assert '"name": "mls-lock-a"' in explained and '"version": "1.0"' in explained
    assert "mls-lock-win" not in explained
    assert '"sha256:' in explained
    exported = uv("export", "--quiet", "--format", "pylock.toml", "--no-emit-project",
                  "--frozen", cwd=project)
    as_pylock = write_codeset(tmp_path / "pylock", {"MLproject": MINIMAL_MLPROJECT,
                                                    "pylock.toml": exported})
    code, tag, err = hashed(as_pylock)
    assert code == 0, err
    assert tag.strip() == explained.strip().splitlines()[-1]


PYLOCK = """\
lock-version = "1.0"
created-by = "hand"
requires-python = ">=3.10"
{packages}
"""
PACKAGE = ("""
[[packages]]
name = "{name}"
version = "{version}"
{marker}index = "https://pypi.example/simple"
wheels = [
  """ '{{ name = "{wheel}", url = "https://files.example/{wheel}", '
           'hashes = {{ sha256 = "{sha}" }} }},\n]\n')


def pylock(packages: list[dict[str, str]], tail: str = "") -> str:
    """A pylock.toml of ``packages`` (name, version, marker, sha), then ``tail``."""
    tables = "".join(PACKAGE.format(
        name=p["name"], version=p["version"], wheel=f"{p['name'].replace('-', '_')}-"
        f"{p['version']}-py3-none-any.whl", sha=p.get("sha", "a" * 64),
        marker=f"marker = \"{p['marker']}\"\n" if p.get("marker") else "") for p in packages)
    return PYLOCK.format(packages=tables + tail or "packages = []")


def test_the_tag_follows_the_locked_set_not_the_file(tmp_path: Path) -> None:
    """Reordered, reformatted, or changed only where another platform installs: the same
    tag; a locked version or artifact hash changed: another."""
    linux = {"name": "mls-lock-a", "version": "1.0"}
    other = {"name": "mls-lock-b", "version": "3.1"}
    windows = {"name": "mls-lock-win", "version": "1.0", "marker": "sys_platform == 'win32'"}

    def tag(text: str, name: str) -> str:
        codeset = write_codeset(tmp_path / name, {"MLproject": MINIMAL_MLPROJECT,
                                                  "pylock.toml": text})
        code, out, err = hashed(codeset)
        assert code == 0, err
        return out.strip()

    base = tag(pylock([linux, other, windows]), "base")
    assert tag(pylock([windows, other, linux]), "reordered") == base
    assert tag("# a comment\n\n" + pylock([linux, other, windows]).replace(" = ", "   =   "),
               "reformatted") == base
    assert tag(pylock([linux, other, {**windows, "version": "9.0"}]), "windows-only") == base
    assert tag(pylock([{**linux, "version": "1.1"}, other, windows]), "version") != base
    assert tag(pylock([{**linux, "sha": "b" * 64}, other, windows]), "hash") != base


def test_a_stale_uv_lock_is_refused_saying_what_to_run(lock_index: str, tmp_path: Path) -> None:
    project = uv_project(tmp_path / "stale", lock_index, DEPENDENCIES)
    pyproject = project / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("mls-lock-a==1.0", "mls-lock-a==2.0"))
    code, out, err = hashed(project)
    assert (code, out) == (2, "") and "Traceback" not in err
    assert err.strip() == ("mlflow-steps: error: uv.lock: does not satisfy pyproject.toml "
                           "any more; run `uv lock`")


@pytest.mark.parametrize(("text", "expected"), [
    ("lock-version = \n", "mlflow-steps: error: pylock.toml: not valid TOML (Invalid value"),
    (pylock([]).replace('"1.0"', '"2.0"', 1), "mlflow-steps: error: pylock.toml: lock-version: "
     "pylock version 2.0 is not supported"),
    (pylock([], '[[packages]]\nname = "g"\nvcs = { type = "git", url = "https://g.example/g"'
     ' }\n'), "mlflow-steps: error: pylock.toml: Missing required value in "
     "'packages[0].vcs.commit-id'"),
    (pylock([], '[[packages]]\nname = "d"\ndirectory = { path = "../outside" }\n'),
     "mlflow-steps: error: pylock.toml: packages.d: a directory source ('../outside') is "
     "built from source"),
    (pylock([]).replace(">=3.10", ">=3.12"), "mlflow-steps: error: pylock.toml: "
     "requires-python: requires-python >=3.12 excludes python 3.11"),
], ids=["toml", "lock-version", "vcs-without-commit", "directory", "other-python"])
def test_bad_locks_are_one_line_naming_the_file(text: str, expected: str,
                                                tmp_path: Path) -> None:
    codeset = write_codeset(tmp_path / "bad", {"MLproject": MINIMAL_MLPROJECT,
                                               "pylock.toml": text})
    result = run_cli("build", str(codeset), "--registry", "127.0.0.1:9",
                     "--output-file", str(tmp_path / "out"))
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and result.stdout == "" and "Traceback" not in result.stderr
    assert len(lines) == 1 and lines[0].startswith(expected), lines
    assert not (tmp_path / "out").exists()


def test_dependency_groups_select_what_a_lock_installs(lock_index: str,
                                                       tmp_path: Path) -> None:
    """uv.lock: uv's default groups (dev), or the step's dependency_groups instead; a
    pylock.toml: its default-groups, or the asked ones. The tag follows the set; a group the
    lock does not declare, or groups for an environment that is not a lock: one line."""
    project = uv_project(tmp_path / "uv", lock_index, '"mls-lock-a==1.0"',
                         groups='dev = ["mls-lock-b"]\ntrain = []')

    def explained(codeset: Path, *args: str) -> tuple[str, str]:
        code, out, err = hashed(codeset, "--explain", *args)
        assert code == 0, err
        return out, out.strip().splitlines()[-1]

    default, default_tag = explained(project)
    assert '"name": "mls-lock-b"' in default
    train, train_tag = explained(project, "--dependency-groups", "train")
    assert '"name": "mls-lock-b"' not in train and '"name": "mls-lock-a"' in train
    assert train_tag != default_tag
    both = run_cli("hash", str(project), env={**os.environ, "PIP_CONFIG_FILE": os.devnull,
                                              "FUSEML_DEPENDENCY_GROUPS": "train, dev"})
    assert both.returncode == 0 and both.stdout.strip() == default_tag, both.stderr
    code, out, err = hashed(project, "--dependency-groups", "nope")
    assert (code, out) == (2, "") and err.strip() == (
        "mlflow-steps: error: input: dependency_groups: Group `nope` is not defined in the "
        "project's `dependency-groups` table (pyproject.toml)")

    text = pylock([{"name": "mls-lock-a", "version": "1.0"},
                   {"name": "mls-lock-b", "version": "1.0",
                    "marker": "'dev' in dependency_groups"}])
    text = text.replace('created-by = "hand"\n', 'created-by = "hand"\ndependency-groups = '
                        '["dev", "train"]\ndefault-groups = ["dev"]\n')
    locked = write_codeset(tmp_path / "pylock", {"MLproject": MINIMAL_MLPROJECT,
                                                 "pylock.toml": text})
    assert '"name": "mls-lock-b"' in explained(locked)[0]
    assert '"name": "mls-lock-b"' not in explained(locked, "--dependency-groups", "train")[0]
    code, out, err = hashed(locked, "--dependency-groups", "gpu")
    assert (code, out) == (2, "") and err.strip() == (
        "mlflow-steps: error: pylock.toml: dependency_groups: Undeclared dependency groups: "
        "gpu (the lock declares: dev, train)")
    plain = write_codeset(tmp_path / "plain", {"MLproject": MINIMAL_MLPROJECT,
                                               "requirements.txt": "six\n"})
    code, out, err = hashed(plain, "--dependency-groups", "dev")
    assert (code, out) == (2, "") and err.strip() == (
        "mlflow-steps: error: input: dependency_groups: selects a lock's groups: it applies "
        "to pylock.toml, uv.lock and pixi.lock environments, and this codeset's is "
        "requirements.txt")


def test_uv_needs_no_python_on_path_and_one_outside_the_lock_is_said(
        lock_index: str, tmp_path: Path) -> None:
    """uv checks the lock with the builder's own interpreter (a skip path with no Python on
    PATH works); a project whose requires-python excludes it is exported as locked and
    `--explain` says it was not checked."""
    project = uv_project(tmp_path / "uv", lock_index, DEPENDENCIES)
    bare = run_cli("hash", str(project), env={"PATH": "/nonexistent", "HOME": str(tmp_path),
                                              "PIP_CONFIG_FILE": os.devnull})
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.strip() == hashed(project)[1].strip()
    newer = f"{sys.version_info[0]}.{sys.version_info[1] + 1}"  # than this interpreter
    for name in ("pyproject.toml", "uv.lock"):  # as `uv lock` writes it on that Python
        path = project / name
        path.write_text(path.read_text().replace('requires-python = ">=3.10"',
                                                 f'requires-python = ">={newer}"'))
    (project / ".python-version").write_text(f"{newer}\n")
    code, explained, err = hashed(project, "--explain")
    assert code == 0, err
    assert explained.splitlines()[0] == (
        "# environment: uv.lock (a uv lock comes before unlocked specs; taken as locked, not "
        "checked against pyproject.toml: uv checks with a Python in its requires-python, and "
        f"the builder runs {sys.version_info[0]}.{sys.version_info[1]})")
    assert '"name": "mls-lock-a"' in explained and f'"python": "{newer}"' in explained


def test_a_wheel_of_the_codeset_is_locked_by_path_and_hash(tmp_path: Path) -> None:
    """A lock's local wheel (uv exports a path source as an archive path, relative to the
    lock): inside the codeset, with its sha256; hashed by its path and sha256."""
    codeset = write_codeset(tmp_path / "cs", {"MLproject": MINIMAL_MLPROJECT})
    (codeset / "wheels").mkdir()
    wheel = make_wheel(codeset / "wheels", "mls_local", "1.0",
                       {"mls_local/__init__.py": b"V = 1\n"})
    sha = hashlib.sha256(wheel.read_bytes()).hexdigest()

    def lock(path: str, digest: str = sha) -> str:
        return pylock([], f'[[packages]]\nname = "mls-local"\nversion = "1.0"\narchive = '
                          f'{{ path = "{path}", hashes = {{ sha256 = "{digest}" }} }}\n')

    (codeset / "pylock.toml").write_text(lock(f"wheels/{wheel.name}"))
    code, explained, err = hashed(codeset, "--explain")
    assert code == 0, err
    assert f'"path": "wheels/{wheel.name}"' in explained and sha in explained
    for path, digest, expected in (
            (f"wheels/{wheel.name}", "0" * 64, f"'wheels/{wheel.name}' does not match the "
             "lock's sha256"),
            (f"../{wheel.name}", sha, "outside"),
            ("wheels/mls_local-1.0.tar.gz", sha, "a local source archive ('wheels/mls_local-"
             "1.0.tar.gz') is built from source")):
        (codeset / "pylock.toml").write_text(lock(path, digest))
        code, out, err = hashed(codeset)
        assert (code, out) == (2, "") and len(err.strip().splitlines()) == 1, err
        assert err.startswith("mlflow-steps: error: pylock.toml: packages.mls-local: ")
        assert expected in err, err


def test_the_python_comes_from_python_version(tmp_path: Path) -> None:
    codeset = write_codeset(tmp_path / "py", {"MLproject": MINIMAL_MLPROJECT,
                                              "pylock.toml": pylock([]),
                                              ".python-version": "3.12.4\n"})
    code, explained, err = hashed(codeset, "--explain")
    assert code == 0, err
    assert '"python": "3.12"' in explained and '"base_image": "python:3.12-slim"' in explained
