"""Workflow and extension files go through the one bounded reader and YAML loader; the loader
keeps accepting what real files contain."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest
from support.bad_input_corpus import SECRET, materialise
from support.workflow_corpus import VALID, bad_extension_files, bad_workflow_files

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.yaml_file import MAX_DEPTH, compose_documents, load_yaml_text
from mlflow_steps.env.spec import BuildOptions, resolve_env, strip_credentials
from mlflow_steps.workflow.extensions import load_registry
from mlflow_steps.workflow.loader import load_workflow

WORKFLOW_FILES = bad_workflow_files()
EXTENSION_FILES = bad_extension_files()


@pytest.fixture(autouse=True)
def _no_hang():
    """A FIFO read by mistake would block forever: fail after 20 s instead."""
    def expired(*_):
        raise TimeoutError("reading blocked (FIFO?)")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(20)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def _one_line(call, words: tuple[str, ...]) -> str:
    started = time.perf_counter()
    with pytest.raises(StepError) as caught:
        call()
    message = str(caught.value)
    assert time.perf_counter() - started < 10, message
    assert "\n" not in message and SECRET not in message, message
    for word in words:
        assert word in message, f"{word!r} not in {message!r}"
    return message


@pytest.mark.parametrize("case", sorted(WORKFLOW_FILES))
def test_bad_workflow_file_is_one_line(tmp_path: Path, case: str) -> None:
    entry, words = WORKFLOW_FILES[case]
    materialise(tmp_path, {"wf.yaml": entry})
    _one_line(lambda: load_workflow(tmp_path / "wf.yaml"), words)


@pytest.mark.parametrize("case", sorted(EXTENSION_FILES))
def test_bad_extension_file_is_one_line(tmp_path: Path, case: str) -> None:
    entry, words = EXTENSION_FILES[case]
    if isinstance(entry, dict):
        target = materialise(tmp_path / "extensions", entry)
    else:
        target = materialise(tmp_path, {"ext.yaml": entry}) / "ext.yaml"
    _one_line(lambda: load_registry(target), words)


def test_corpora_cover_fifo_size_and_depth() -> None:
    for corpus in (WORKFLOW_FILES, EXTENSION_FILES):
        names = " ".join(corpus)
        assert "FIFO" in names and "200 MB" in names
    assert "nested 100k deep" in " ".join(EXTENSION_FILES)


def test_valid_workflow_file_still_loads(tmp_path: Path) -> None:
    (tmp_path / "wf.yaml").write_text(VALID)
    assert [step.name for step in load_workflow(tmp_path / "wf.yaml").steps] == ["first"]


def test_real_yaml_features_still_load() -> None:
    text = ("base: &base {type: float, default: 0.5}\nother:\n  <<: *base\n  default: 1.5\n"
            "list: [*base, *base]\nint: 10\nfloat: 3.11\nstr: !!str 3.10\ndate: 2024-01-31\n"
            "json: {\"a\": [1, 2]}\n")
    data = load_yaml_text(text, "f.yaml")
    assert data["other"] == {"type": "float", "default": 1.5}
    assert data["list"][0] is data["list"][1]
    assert (data["int"], data["float"], data["str"]) == (10, 3.11, "3.10")
    assert len(compose_documents("a: 1\n---\nb: 2\n", "f.yaml")) == 2


def test_nesting_up_to_the_bound_loads_and_one_more_level_fails() -> None:
    assert load_yaml_text("[" * MAX_DEPTH + "]" * MAX_DEPTH, "f.yaml") is not None
    with pytest.raises(StepError, match="nesting too deep"):
        load_yaml_text("[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1), "f.yaml")


def test_python_versions_that_survive_yaml_are_accepted(codeset) -> None:
    for text, python in (("python: 3.11\n", "3.11"), ("python: 3.12.1\n", "3.12"),
                         ("python: '3.10'\n", "3.10")):
        _, spec = resolve_env(codeset({"python_env.yaml": text}, python), BuildOptions())
        assert spec.python == python


@pytest.mark.parametrize("parameters", [
    "a: float", "a: {type: int, default: 10}", "a: {type: int, default: '10'}",
    "a: {type: int, default: 2.0}", "a: {type: float, default: 1}",
    "a: {type: float, default: '1e-3'}", "a: {type: string, default: 3.10}",
    "a: {default: x}", "a: {}", "a: {type: path, default: data/x.csv}",
    "a: {type: uri, default: 's3://b/k'}", "a: {type: string, default: true}",
])
def test_parameter_specs_mlflow_accepts_are_accepted(codeset, parameters: str) -> None:
    mlproject = ("entry_points:\n  main:\n    command: python t.py\n    parameters:\n"
                 f"      {parameters}\n")
    project, _ = resolve_env(codeset({"MLproject": mlproject, "requirements.txt": "numpy\n"}),
                             BuildOptions())
    assert [p.name for p in project.entry_points["main"].parameters] == ["a"]


def test_urls_without_credentials_still_reach_the_spec(codeset) -> None:
    _, spec = resolve_env(codeset({"requirements.txt": (
        "--index-url https://pypi.example/simple?region=eu\n"
        "pkg @ https://files.example/pkg-1.0.tar.gz#sha256=" + "a" * 64 + "\n")}),
        BuildOptions())
    assert spec.pip["index_url"] == "https://pypi.example/simple?region=eu"
    assert spec.pip["requirements"][0].startswith("pkg @ https://files.example/")


@pytest.mark.parametrize(("url", "stripped"), [
    ("https://u:p@m.example:8443/simple", "https://m.example:8443/simple"),
    (f"https://m.example/simple?access_token={SECRET}&region=eu",
     "https://m.example/simple?region=eu"),
    (f"https://b.example/s?X-Amz-Credential=k&X-Amz-Signature={SECRET}", "https://b.example/s"),
    ("https://m.example/simple?region=eu", "https://m.example/simple?region=eu"),
    ("https://u:p@m.example:bad/", "https://m.example:bad/"),
    ("http://[::1/simple", "http://[::1/simple"),
])
def test_strip_credentials_drops_userinfo_and_credential_parameters(url: str,
                                                                    stripped: str) -> None:
    assert strip_credentials(url) == stripped


def test_index_url_input_query_token_stays_out_of_the_spec() -> None:
    from support.helpers import EXAMPLE

    options = BuildOptions(index_url=f"https://m.example/simple?token={SECRET}")
    _, spec = resolve_env(EXAMPLE, options)
    assert spec.build_index_urls == ("https://m.example/simple",)
    assert SECRET not in spec.explain("t")
