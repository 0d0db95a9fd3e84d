"""Extension registry files: selector matching, scopes, env, and `mlflow-steps env`."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from dotenv import dotenv_values
from support.helpers import REPO, run_cli

from mlflow_steps.core.errors import StepError
from mlflow_steps.workflow.envexport import parse_selector
from mlflow_steps.workflow.extensions import Identity, load_registry

RECORDS = """
id: mlflow-a
product: mlflow
version: 1.10.4
zone: alpha
configuration: {MLFLOW_EXPERIMENT_NAME: shared}
services:
  - id: tracking
    resource: mlflow-tracking
    category: experiment-tracking
    endpoints:
      - url: http://tracking.example:5000
        type: external
        configuration: {MLFLOW_TRACKING_URI: http://tracking.example:5000}
      - url: http://mlflow.mlflow
        type: internal
        configuration: {MLFLOW_TRACKING_URI: http://mlflow.mlflow}
  - id: store
    resource: s3
    category: model-store
    authrequired: true
    endpoints:
      - url: http://minio:9000
        configuration: {MLFLOW_S3_ENDPOINT_URL: http://minio:9000}
    credentials:
      - id: everyone
        scope: global
        configuration: {AWS_ACCESS_KEY_ID: global-id, AWS_SECRET_ACCESS_KEY: global-s3cret}
      - id: team
        scope: project
        projects: [alpha]
        configuration: {AWS_ACCESS_KEY_ID: alpha-id, AWS_SECRET_ACCESS_KEY: alpha-s3cret}
      - id: alice
        scope: user
        users: [alice]
        configuration: {AWS_ACCESS_KEY_ID: alice-id, AWS_SECRET_ACCESS_KEY: "it's \\\\ $x"}
---
id: mlflow-b
product: mlflow
version: 2.3.0
services:
  - id: tracking
    resource: mlflow-tracking
    endpoints: [{url: http://b:5000, configuration: {MLFLOW_TRACKING_URI: http://b:5000}}]
  - id: locked
    resource: s3
    authrequired: true
    endpoints: [{url: http://b:9000}]
"""
BOB = Identity("beta", "bob")


@pytest.fixture
def registry_file(tmp_path: Path) -> Path:
    path = tmp_path / "extensions.yaml"
    path.write_text(RECORDS)
    return path


def resolve(registry_file: Path, text: str, identity: Identity = BOB):
    return load_registry(registry_file).resolve(parse_selector(text, 0), identity)


@pytest.mark.parametrize(("selector", "where"), [
    ("extension_id=mlflow-b,service_id=tracking", "mlflow-b/tracking"),
    ("product=mlflow,service_resource=mlflow-tracking", "mlflow-a/tracking"),
    ("service_category=model-store", "mlflow-a/store"),
    ("zone=alpha,service_id=tracking", "mlflow-a/tracking"),
    ("version=~1.10.0,service_resource=mlflow-tracking", "mlflow-a/tracking"),
    ("version=>=2,service_resource=mlflow-tracking", "mlflow-b/tracking"),
    ("version=2.3.0,service_id=tracking", "mlflow-b/tracking"),
    ("version=>= 1.2 < 2,service_id=tracking", "mlflow-a/tracking"),
])
def test_selectors_match_fuseml_fields(registry_file: Path, selector: str, where: str) -> None:
    access = resolve(registry_file, selector)
    assert f"{access.extension.id}/{access.service.id}" == where


def test_internal_endpoint_preferred_and_config_maps_merged(registry_file: Path) -> None:
    access = resolve(registry_file, "extension_id=mlflow-a,service_id=tracking")
    assert access.endpoint.url == "http://mlflow.mlflow"
    assert access.env() == {"MLFLOW_EXPERIMENT_NAME": "shared",
                            "MLFLOW_TRACKING_URI": "http://mlflow.mlflow"}
    assert access.secrets() == set()
    assert (access.attribute("version"), access.attribute("zone")) == ("1.10.4", "alpha")


@pytest.mark.parametrize(("identity", "key_id"), [
    (Identity("beta", "bob"), "global-id"),
    (Identity("alpha", "bob"), "alpha-id"),
    (Identity("alpha", "alice"), "alice-id"),
])
def test_credentials_by_scope(registry_file: Path, identity: Identity, key_id: str) -> None:
    access = resolve(registry_file, "service_resource=s3", identity)
    assert access.env()["AWS_ACCESS_KEY_ID"] == key_id
    assert key_id in access.secrets()
    assert access.attribute("cfg", "AWS_ACCESS_KEY_ID") == key_id


@pytest.mark.parametrize(("selector", "words"), [
    ("product=kserve", ("selector-1 (product=kserve)",)),
    ("version=~3.0,service_id=tracking", ("version=~3.0",)),
    ("extension_id=mlflow-b,service_id=locked",
     ("mlflow-b/locked matched but has no usable endpoint or no credentials", "'bob'")),
])
def test_no_match_names_the_selector(registry_file: Path, selector: str, words) -> None:
    with pytest.raises(StepError) as caught:
        resolve(registry_file, selector)
    message = str(caught.value)
    assert "\n" not in message and str(registry_file) in message
    for word in words:
        assert word in message


def test_directory_json_and_list_records(tmp_path: Path) -> None:
    (tmp_path / "a.json").write_text(json.dumps([{"id": "x", "services": [
        {"id": "s", "resource": "r", "endpoints": [{"url": "http://x"}]}]}]))
    (tmp_path / "b.yml").write_text("id: y\nservices: []\n")
    (tmp_path / "notes.txt").write_text("ignored")
    registry = load_registry(tmp_path)
    assert [e.id for e in registry.extensions] == ["x", "y"]


@pytest.mark.parametrize(("text", "words"), [
    ("id: a\nservices:\n  - resource: s3\n", ("services[0]", "missing required key 'id'")),
    ("id: a\nowner: me\n", ("owner", "unknown key")),
    ("id: a\n---\nid: a\n", ("duplicate extension id 'a'",)),
    ("id: a\nservices:\n  - id: s\n    endpoints: [{url: u, type: public}]\n",
     ("type", "'public' is not one of")),
    ("id: a\nservices:\n  - id: s\n    credentials: [{scope: project}]\n",
     ("project-scoped credentials need",)),
])
def test_bad_registry_is_one_line(tmp_path: Path, text: str, words) -> None:
    path = tmp_path / "ext.yaml"
    path.write_text(text)
    with pytest.raises(StepError) as caught:
        load_registry(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    for word in words:
        assert word in str(caught.value)


def test_env_command_export_lines_configure_a_shell(registry_file: Path) -> None:
    result = run_cli("env", "--extensions", str(registry_file), "--project", "alpha",
                     "--user", "alice", "--selector", "product=mlflow,service_resource=s3")
    assert result.returncode == 0, result.stderr
    shell = subprocess.run(["sh", "-c", f'{result.stdout}\nprintf %s "$AWS_SECRET_ACCESS_KEY"'],
                           capture_output=True, text=True, check=True)
    assert shell.stdout == "it's \\ $x"
    assert result.stderr == ""


def test_env_command_dotenv_file_and_verbose_masks(registry_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "mlflow.env"
    result = run_cli("env", "--extensions", str(registry_file), "--project", "alpha",
                     "--user", "alice", "--format", "dotenv", "-o", str(out), "-v",
                     "--selector", "name=store,service_resource=s3",
                     "--selector", "extension_id=mlflow-a,service_id=tracking")
    assert result.returncode == 0, result.stderr
    values = dotenv_values(out)
    assert values["AWS_SECRET_ACCESS_KEY"] == "it's \\ $x"
    assert values["MLFLOW_TRACKING_URI"] == "http://mlflow.mlflow"
    assert oct(out.stat().st_mode & 0o777) == "0o600"
    assert "AWS_SECRET_ACCESS_KEY=***" in result.stderr and "alice-id" not in result.stderr
    assert "$x" not in result.stderr and result.stdout == ""


def test_env_command_defaults_to_the_tracking_server() -> None:
    result = run_cli("env", "--extensions", str(REPO / "workflows" / "extensions.example.yaml"))
    assert result.stdout == "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000\n"


def test_env_command_no_match_is_exit_2(registry_file: Path) -> None:
    result = run_cli("env", "--extensions", str(registry_file), "--selector", "zone=mars",
                     env={**os.environ})
    assert result.returncode == 2 and result.stdout == ""
    assert "no extension" in result.stderr and "zone=mars" in result.stderr
