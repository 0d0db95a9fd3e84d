"""Entry-point argument parsing and checking (pure logic)."""

from __future__ import annotations

import pytest

from mlflow_steps.core.errors import StepError
from mlflow_steps.env.project import EntryPoint, Parameter
from mlflow_steps.runtime.args import resolve_parameters, split_args
from mlflow_steps.runtime.experiment import default_experiment_name

ENTRY = EntryPoint("main", "python train.py", (
    Parameter("alpha", "float", 0.5), Parameter("epochs", "int", None),
    Parameter("name", "string", "x"), Parameter("data", "path", None),
))


@pytest.mark.parametrize(("text", "expected"), [
    ("", []),
    ("a=1 b=2", [("a", "1"), ("b", "2")]),
    ("a=1,b=2", [("a", "1"), ("b", "2")]),
    ("a=1, b=2", [("a", "1"), ("b", "2")]),
    ("url=http://x/?q=1&r=2", [("url", "http://x/?q=1&r=2")]),
    ("msg='hello, world' n=3", [("msg", "hello, world"), ("n", "3")]),
    ('msg="a b"', [("msg", "a b")]),
    ("expr=a==b", [("expr", "a==b")]),
    ("empty=", [("empty", "")]),
    ("lr='0.1; rm -rf /'", [("lr", "0.1; rm -rf /")]),
])
def test_split_args(text: str, expected: list[tuple[str, str]]) -> None:
    assert split_args(text) == expected


@pytest.mark.parametrize(("text", "message"), [
    ("a=1 b", "'b' is not name=value"),
    ("=1", "'=1' is not name=value"),
    ("msg='unterminated", "malformed argument list (No closing quotation)"),
    ("layers=1,2", "'2' is not name=value (quote values that contain spaces or commas)"),
])
def test_split_args_rejects(text: str, message: str) -> None:
    with pytest.raises(StepError, match="mlflow_entrypoint_args") as info:
        split_args(text)
    assert message in str(info.value)


def test_resolve_given_env_and_defaults() -> None:
    values = resolve_parameters(ENTRY, [("epochs", "3")], {"FUSEML_DATA": "/data/x.csv",
                                                           "FUSEML_ALPHA": ""})
    assert values == {"epochs": "3", "data": "/data/x.csv"}


def test_given_argument_beats_fuseml_variable() -> None:
    values = resolve_parameters(ENTRY, [("epochs", "3"), ("data", "a")],
                                {"FUSEML_EPOCHS": "9", "FUSEML_DATA": "b"})
    assert values == {"epochs": "3", "data": "a"}


@pytest.mark.parametrize(("given", "environ", "message"), [
    ([("nope", "1"), ("epochs", "1"), ("data", "d")], {},
     "'nope' is not a parameter of entry point 'main' (declared: alpha, epochs, name, data)"),
    ([("epochs", "1.5"), ("data", "d")], {}, "epochs='1.5' is not a valid int"),
    ([("alpha", "0.1; rm -rf /"), ("epochs", "1"), ("data", "d")], {},
     "alpha='0.1; rm -rf /' is not a valid float"),
    ([("epochs", "1")], {}, "needs data (no default): pass them as name=value or set FUSEML_DATA"),
    ([("epochs", "1"), ("epochs", "2"), ("data", "d")], {}, "'epochs' is given twice"),
    ([("data", "d")], {"FUSEML_EPOCHS": "x"}, "epochs='x' is not a valid int"),
    ([("epochs", "1"), ("data", " ")], {}, "data is an empty path"),
])
def test_resolve_rejects(given, environ, message: str) -> None:
    with pytest.raises(StepError) as info:
        resolve_parameters(ENTRY, given, environ)
    assert message in str(info.value)


def test_default_experiment_name(tmp_path) -> None:
    assert default_experiment_name(tmp_path, "proj") == "proj"
    (tmp_path / ".fuseml").mkdir()
    (tmp_path / ".fuseml" / "_org").write_text("acme\n")
    assert default_experiment_name(tmp_path, "proj") == "proj"
    (tmp_path / ".fuseml" / "_project").write_text("churn\n")
    assert default_experiment_name(tmp_path, "proj") == "acme.churn"
    with pytest.raises(StepError, match="set mlflow_experiment"):
        default_experiment_name(tmp_path / "none", None)
