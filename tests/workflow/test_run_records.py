"""Run records (workflow/runs.py): a damaged record is one line naming its file and field."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from support.helpers import run_cli

from mlflow_steps.core.errors import StepError
from mlflow_steps.workflow.runs import RECORD_FILE, RunRecord, RunStore


def saved(store: RunStore, workflow: str = "wf") -> RunRecord:
    record = RunRecord.new(workflow, "wf.yaml", {"a": "1"}, ["build", "train"])
    record.steps[0].exit_code = 0
    store.save(record)
    return record


def damage(store: RunStore, record: RunRecord, change) -> Path:
    path = store.directory(record) / RECORD_FILE
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))
    return path


def test_round_trip(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    record = saved(store)
    assert store.load(store.directory(record) / RECORD_FILE) == record
    assert store.list() == [record]


@pytest.mark.parametrize(("change", "field", "message"), [
    (lambda d: d.update(status=None), "status", "is null, expected a string"),
    (lambda d: d.update(started="yesterday"), "started", 'is str "yesterday", expected an '
     "integer or a number"),
    (lambda d: d.update(started=True), "started", "is bool true, expected"),
    (lambda d: d.update(inputs=None), "inputs", "is null, expected an object"),
    (lambda d: d.update(outputs={"url": 3}), "outputs.url", "is int 3, expected a string"),
    (lambda d: d.update(steps=None), "steps", "is null, expected a list"),
    (lambda d: d.pop("id"), "id", "is missing"),
    (lambda d: d["steps"][1].update(seconds=None), "steps[1].seconds", "is null"),
    (lambda d: d["steps"][0].update(exit_code="0"), "steps[0].exit_code",
     'is str "0", expected an integer'),
    (lambda d: d["steps"][0].update(build_skipped="no"), "steps[0].build_skipped",
     "expected true or false"),
    (lambda d: d["steps"].append(None), "steps[2]", "is null, expected an object"),
])
def test_damaged_field_is_named(tmp_path: Path, change, field: str, message: str) -> None:
    store = RunStore(tmp_path)
    path = damage(store, saved(store), change)
    with pytest.raises(StepError) as info:
        store.load(path)
    assert info.value.source == str(path) and info.value.field == field
    assert message in str(info.value)


def test_nullable_and_unknown_fields(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    path = damage(store, saved(store), lambda d: (d["steps"][0].update(exit_code=None),
                                                  d.update(added_later="x")))
    assert store.load(path).steps[0].exit_code is None


@pytest.mark.parametrize("text", ["", "[1, 2]", "null", "{not json"])
def test_not_a_record(tmp_path: Path, text: str) -> None:
    store = RunStore(tmp_path)
    path = store.directory(saved(store)) / RECORD_FILE
    path.write_text(text)
    with pytest.raises(StepError, match=str(path)):
        store.load(path)


def test_listing_skips_a_damaged_record_with_one_line(tmp_path: Path) -> None:
    store = RunStore(tmp_path)
    good = saved(store, "good")
    path = damage(store, saved(store, "bad"), lambda d: d.update(status=None))
    env = {"MLFLOW_STEPS_RUNS_DIR": str(tmp_path), "PATH": "/usr/bin:/bin"}
    for args in (("workflow", "runs"), ("workflow", "runs", "--json")):
        result = run_cli(*args, env=env)
        assert result.returncode == 0, result.stderr
        assert good.id in result.stdout and "Traceback" not in result.stderr
        assert result.stderr.strip() == (f"mlflow-steps: warning: {path}: status: is null, "
                                         "expected a string; record skipped")
