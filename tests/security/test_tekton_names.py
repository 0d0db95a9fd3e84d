"""Issue 28, point 11: Tekton names cut to 63 characters keep a hash of the full name, so two
long workflow or step names never merge into one object; a collision that remains (sanitizing,
or the short hash itself) is refused with one line naming both, exit 2, nothing written."""

from __future__ import annotations

import hashlib
import random
import re
import string
from pathlib import Path
from typing import Any

import yaml
from support.helpers import REPO, run_cli

from mlflow_steps.workflow.model import k8s_name

DNS_1123_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
LONG = "a-very-long-and-descriptive-name-that-goes-on-past-the-kubernetes-limit"
# Found by a birthday search: "wf-" + each step name is longer than 63 characters, the two
# share their first 52 and the first 10 hex digits of their SHA-256 (40 bits) are equal.
TASK_COLLISION = ("s" * 56 + "-37102", "s" * 56 + "-56c8c")
# The same for the step names alone (the pipeline task names).
STEP_COLLISION = ("s" * 60 + "-14e60", "s" * 60 + "-53a5f")


def workflow(name: str, steps: list[dict[str, Any]]) -> str:
    return yaml.safe_dump({"name": name, "steps": steps}, sort_keys=False)


def export(tmp_path: Path, text: str, *options: str) -> tuple[Any, Path]:
    tmp_path.mkdir(exist_ok=True)
    source = tmp_path / "wf.yaml"
    source.write_text(text)
    out = tmp_path / "out"
    return run_cli("workflow", "export", str(source), "--tekton", "-o", str(out),
                   *options, timeout=120), out


def documents(out: Path) -> list[dict[str, Any]]:
    return [doc for path in sorted(out.iterdir()) for doc in yaml.safe_load_all(path.read_text())]


def same_hash(prefix: str, pair: tuple[str, str]) -> bool:
    """The pair is a real collision of the 10 hex digits of the hash (not two equal names)."""
    digests = {hashlib.sha256(f"{prefix}{name}".encode()).hexdigest()[:10] for name in pair}
    return len(digests) == 1 and pair[0] != pair[1]


def refused(result: Any, out: Path, *names: str) -> None:
    """Exit 2, one line naming every one of ``names``, no traceback, no file written."""
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert all(name in lines[0] for name in names), lines[0]
    assert not out.exists() or not any(out.iterdir())


def test_cut_names_are_valid_labels_and_keep_a_hash_of_the_whole_name() -> None:
    rng = random.Random(28)
    for _ in range(2000):
        raw = "".join(rng.choice(string.ascii_letters + string.digits + "-_. /")
                      for _ in range(rng.randrange(1, 200)))
        if not re.search(r"[A-Za-z0-9]", raw):
            continue
        name = k8s_name(raw)
        assert len(name) <= 63 and DNS_1123_LABEL.fullmatch(name), (raw, name)
        full = re.sub(r"[^a-z0-9-]+", "-", raw.lower()).strip("-")
        if len(full) <= 63:
            assert name == full
        else:
            digest = hashlib.sha256(full.encode()).hexdigest()[:10]
            assert name == f"{full[:52].rstrip('-')}-{digest}"


def test_two_long_workflow_names_make_two_pipelines_and_tasks(tmp_path: Path) -> None:
    names: list[set[str]] = []
    for suffix in ("one", "two"):
        result, out = export(tmp_path / suffix, workflow(f"{LONG}-{suffix}", [
            {"name": "train", "image": "img:1"}]))
        assert result.returncode == 0, result.stderr
        objects = {doc["metadata"]["name"] for doc in documents(out) if "name" in doc["metadata"]}
        assert all(len(name) <= 63 and DNS_1123_LABEL.fullmatch(name) for name in objects)
        names.append(objects)
    assert len(names[0]) == len(names[1]) == 2  # the Pipeline and the Task
    assert not names[0] & names[1]


def test_two_long_step_names_make_two_tasks(tmp_path: Path) -> None:
    steps = [f"{LONG}-{n}" for n in ("prepare", "train")]
    result, out = export(tmp_path, workflow("wf", [
        {"name": step, "image": "img:1"} for step in steps]))
    assert result.returncode == 0, result.stderr
    tasks = [doc for doc in documents(out) if doc["kind"] == "Task"]
    assert len({task["metadata"]["name"] for task in tasks}) == 2
    pipeline = yaml.safe_load((out / "pipeline.yaml").read_text())
    pipeline_tasks = pipeline["spec"]["tasks"]
    assert len({task["name"] for task in pipeline_tasks}) == 2
    assert {task["taskRef"]["name"] for task in pipeline_tasks} == \
        {task["metadata"]["name"] for task in tasks}
    assert pipeline_tasks[1]["runAfter"] == [pipeline_tasks[0]["name"]]


def test_a_task_name_hash_collision_is_refused(tmp_path: Path) -> None:
    first, second = TASK_COLLISION
    assert same_hash("wf-", TASK_COLLISION)
    assert k8s_name("wf", first) == k8s_name("wf", second)
    assert k8s_name(first) != k8s_name(second)
    result, out = export(tmp_path, workflow("wf", [
        {"name": step, "image": "img:1"} for step in TASK_COLLISION]))
    refused(result, out, first, second, f"Task {k8s_name('wf', first)!r}")


def test_a_step_name_hash_collision_is_refused(tmp_path: Path) -> None:
    first, second = STEP_COLLISION
    assert same_hash("", STEP_COLLISION)
    assert k8s_name(first) == k8s_name(second) != first[:63]
    result, out = export(tmp_path, workflow("wf", [
        {"name": step, "image": "img:1"} for step in STEP_COLLISION]))
    refused(result, out, first, second, k8s_name(first))


def test_an_extension_secret_named_like_a_builder_secret_is_refused(tmp_path: Path) -> None:
    """Extension ``pip`` service ``config`` and the builder's pip-config Secret: one name."""
    records = tmp_path / "extensions.yaml"
    records.write_text(yaml.safe_dump({
        "id": "pip", "product": "p", "version": "1", "zone": "z", "services": [{
            "id": "config", "resource": "r", "category": "c", "authrequired": True,
            "endpoints": [{"url": "http://127.0.0.1:1", "type": "internal"}],
            "credentials": [{"id": "k", "scope": "global",
                             "configuration": {"TOKEN": "secret-token"}}]}]}))
    build = yaml.safe_load((REPO / "workflows" / "mlflow-build.yaml").read_text())
    build["name"] = "wf"
    build["steps"][0]["extensions"] = [{"name": "store", "extension_id": "pip"}]
    result, out = export(tmp_path, yaml.safe_dump(build, sort_keys=False),
                         "--extensions", str(records))
    refused(result, out, "wf/pip-config", "wf/pip/config", "Secret 'wf-pip-config'")
