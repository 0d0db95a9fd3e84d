"""Workflow files: every broken one fails on one line naming file, line and field path."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.helpers import REPO, run_cli
from support.workflow_corpus import BAD_WORKFLOWS, VALID

from mlflow_steps.core.errors import StepError
from mlflow_steps.workflow.expressions import (
    ExpressionError,
    ExtensionRef,
    InputRef,
    StepOutputRef,
    parse_template,
)
from mlflow_steps.workflow.loader import load_workflow, parse_workflow

SHIPPED = sorted((REPO / "workflows").glob("mlflow-*.yaml"))


@pytest.mark.parametrize("case", sorted(BAD_WORKFLOWS))
def test_broken_workflow_is_one_line_with_place(case: str) -> None:
    text, line, field, words = BAD_WORKFLOWS[case]
    with pytest.raises(StepError) as caught:
        parse_workflow(text, "wf.yaml")
    message = str(caught.value)
    assert "\n" not in message
    prefix = f"wf.yaml:{line}: {field}: " if field else f"wf.yaml:{line}: "
    assert message.startswith(prefix), f"{case}: {message!r} does not start with {prefix!r}"
    for word in words:
        assert word in message, f"{case}: {word!r} not in {message!r}"


def test_corpus_is_large_and_its_base_is_valid() -> None:
    assert len(BAD_WORKFLOWS) >= 20
    workflow = parse_workflow(VALID, "wf.yaml")
    assert [step.name for step in workflow.steps] == ["first"]


@pytest.mark.parametrize("path", SHIPPED, ids=lambda p: p.name)
def test_shipped_workflows_are_valid(path: Path) -> None:
    workflow = load_workflow(path)
    assert workflow.steps[0].name == "builder"
    assert all(step.codeset and step.codeset.path == "/project" for step in workflow.steps)


def test_shipped_workflows_chain_builder_trainer_server() -> None:
    names = {path.name: [s.name for s in load_workflow(path).steps] for path in SHIPPED}
    assert names == {"mlflow-build.yaml": ["builder"],
                     "mlflow-train.yaml": ["builder", "trainer"],
                     "mlflow-e2e.yaml": ["builder", "trainer", "server"]}
    train = load_workflow(REPO / "workflows" / "mlflow-train.yaml")
    assert train.steps[1].image.refs == (StepOutputRef("builder", "mlflow-runtime"),)
    assert [o.name for o in train.outputs] == ["model-url"]


def test_fuseml_codeset_input_without_name_is_accepted() -> None:
    text = VALID.replace("      - name: code\n        codeset:", "      - codeset:")
    assert parse_workflow(text, "wf.yaml").steps[0].codeset.input == "code"


def test_cli_validate_exit_codes(tmp_path: Path) -> None:
    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(VALID)
    bad.write_text(BAD_WORKFLOWS["dangling step output (FuseML docs)"].text)
    result = run_cli("workflow", "validate", str(good))
    assert result.returncode == 0 and "ok (first)" in result.stdout
    result = run_cli("workflow", "validate", str(bad))
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"mlflow-steps: error: {bad}:25: ")


@pytest.mark.parametrize(("text", "parts"), [
    ("plain", ("plain",)),
    ("{{ inputs.x }}", (InputRef("x"),)),
    ("{{inputs.mlflow-codeset.project}}", (InputRef("mlflow-codeset", "project"),)),
    ("a{{ steps.b.outputs.c-d }}e", ("a", StepOutputRef("b", "c-d"), "e")),
    ("{{ extension.s3.url }}:{{ extension.s3.cfg.AWS_KEY }}",
     (ExtensionRef("s3", "url"), ":", ExtensionRef("s3", "cfg", "AWS_KEY"))),
    ("{{ extension.t.zone }}", (ExtensionRef("t", "zone"),)),
])
def test_expressions_parse(text: str, parts: tuple) -> None:
    assert parse_template(text).parts == parts


@pytest.mark.parametrize("text", ["{{ inputs.x", "{{ steps.a.b }}", "{{ extension.a.cfg }}",
                                  "{{ }}", "x {{ outputs.y }}"])
def test_bad_expressions_fail(text: str) -> None:
    with pytest.raises(ExpressionError):
        parse_template(text)
