"""deploy/kubernetes: schema-valid manifests that agree with each other and with the image."""

from __future__ import annotations

import copy
from pathlib import Path

import kubernetes_validate
import pytest
import yaml
from support.helpers import REPO

from mlflow_steps.cli.server import server
from mlflow_steps.server.config import BACKEND_STORE_URI, TOKEN

MANIFESTS = sorted((REPO / "deploy" / "kubernetes").glob("*.yaml"))
KUBERNETES_VERSION = "1.30.0"
# Read by MLflow itself rather than by `mlflow-steps server`.
MLFLOW_SETTINGS = {"MLFLOW_SERVER_ALLOWED_HOSTS"}


def _load() -> dict[str, dict]:
    return {doc["kind"]: doc for path in MANIFESTS for doc in yaml.safe_load_all(path.read_text())}


@pytest.mark.parametrize("path", MANIFESTS, ids=lambda p: p.name)
def test_manifest_is_valid(path: Path) -> None:
    for document in yaml.safe_load_all(path.read_text()):
        kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def _break_port(docs: dict[str, dict]) -> dict:
    docs["Service"]["spec"]["ports"][0]["port"] = "http"
    return docs["Service"]


def _misspell_field(docs: dict[str, dict]) -> dict:
    _pod("Deployment", docs)["containers"][0]["readinesProbe"] = {}
    return docs["Deployment"]


def _drop_schedule(docs: dict[str, dict]) -> dict:
    del docs["CronJob"]["spec"]["schedule"]
    return docs["CronJob"]


@pytest.mark.parametrize("breakage", [_break_port, _misspell_field, _drop_schedule])
def test_validator_catches_a_broken_manifest(breakage) -> None:
    """The manifests pass because they are right, not because nothing is checked."""
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(breakage(copy.deepcopy(_load())), KUBERNETES_VERSION,
                                     strict=True)


def test_environment_names_are_ones_the_image_reads() -> None:
    known = MLFLOW_SETTINGS | {param.envvar for command in server.commands.values()
                               for param in command.params if param.envvar}
    for kind in ("Deployment", "CronJob"):
        for container in _pod(kind, _load())["containers"]:
            assert {env["name"] for env in container["env"]} <= known, kind


def _pod(kind: str, docs: dict[str, dict]) -> dict:
    spec = docs[kind]["spec"]
    return (spec["jobTemplate"]["spec"] if kind == "CronJob" else spec)["template"]["spec"]


def test_pieces_fit_together() -> None:
    docs = _load()
    assert set(docs) >= {"Deployment", "Service", "Secret", "CronJob", "PersistentVolumeClaim"}
    secret_keys = set(docs["Secret"]["stringData"])
    assert secret_keys == {BACKEND_STORE_URI, TOKEN}
    deployment_labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= deployment_labels.items()
    for kind, args in (("Deployment", ["serve"]), ("CronJob", ["gc"])):
        pod = _pod(kind, docs)
        (container,) = pod["containers"]
        assert container["args"] == args
        assert pod["securityContext"]["runAsNonRoot"] is True
        refs = [e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e]
        assert all(ref["name"] == docs["Secret"]["metadata"]["name"] for ref in refs)
        assert {ref["key"] for ref in refs} <= secret_keys
        claims = {v["persistentVolumeClaim"]["claimName"] for v in pod["volumes"]
                  if "persistentVolumeClaim" in v}
        assert claims == {docs["PersistentVolumeClaim"]["metadata"]["name"]}
        assert {"mountPath": "/data", "name": "data"} in container["volumeMounts"]
    server = _pod("Deployment", docs)["containers"][0]
    assert server["readinessProbe"]["httpGet"]["path"] == "/health"
    assert {"name": "MLFLOW_SERVER_REQUIRE_TOKEN", "value": "true"} in server["env"]
    assert docs["CronJob"]["spec"]["concurrencyPolicy"] == "Forbid"
