"""Issue 28, point 7: no credential is echoed in an error or a log, whatever its shape (a URL
with or without a scheme, in a requirement option, an env var, an extension endpoint)."""

from __future__ import annotations

from pathlib import Path

import pytest
from support.crafted import run_main
from support.helpers import MINIMAL_MLPROJECT, write_codeset

from mlflow_steps.core.redaction import MASK, redact

PASSWORD = "Hunter2-pass-9"


@pytest.mark.parametrize("line", [
    f"--find-links user:{PASSWORD}@host.example/wheels",
    f"--find-links=user:{PASSWORD}@host.example/wheels",
    f"-f user:{PASSWORD}@[::1]:8080/wheels",
    f"--index-url user:{PASSWORD}@host.example/simple",
    f"--extra-index-url=user:{PASSWORD}@host.example:8443/simple",
])
def test_a_requirement_option_without_a_scheme_is_refused_without_its_password(
        tmp_path: Path, capsys, line: str) -> None:
    codeset = write_codeset(tmp_path / "codeset", {
        "MLproject": MINIMAL_MLPROJECT, "requirements.txt": f"{line}\nsix==1.16.0\n"})
    code, out, err = run_main(capsys, "hash", "--explain", str(codeset))
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "requirements.txt: line 1" in err
    assert PASSWORD not in out + err


def test_an_index_variable_without_a_scheme_is_logged_without_its_password(
        tmp_path: Path, capsys, monkeypatch) -> None:
    """`build --verbose` logs the pip config it forwards (a URL without a scheme is skipped,
    and named as skipped) before it reaches the registry (a closed port here)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", str(tmp_path / "absent.conf"))
    monkeypatch.setenv("PIP_EXTRA_INDEX_URL", f"user:{PASSWORD}@mirror.example/simple")
    codeset = write_codeset(tmp_path / "codeset", {
        "MLproject": MINIMAL_MLPROJECT, "requirements.txt": "six==1.16.0\n"})
    code, out, err = run_main(capsys, "--network-timeout", "5", "build", str(codeset),
                              "--verbose", "--registry", "127.0.0.1:1")
    assert code != 0 and "skipped local=user:***@mirror.example/simple" in err, err
    assert PASSWORD not in out + err


@pytest.mark.parametrize(("text", "kept"), [
    (f"user:{PASSWORD}@host.example/path", "host.example/path"),
    (f"PIP_FIND_LINKS=user:{PASSWORD}@host/x", "PIP_FIND_LINKS=user:"),
    (f"see 'user:{PASSWORD}@10.0.0.1:8080/simple'", "@10.0.0.1:8080/simple"),
])
def test_every_shape_is_masked(text: str, kept: str) -> None:
    shown = redact(text)
    assert PASSWORD not in shown and MASK in shown and kept in shown


def test_digests_and_tags_are_not_taken_for_credentials() -> None:
    for text in ("python:3.11-slim@sha256:" + "a" * 64, "git@github.com:org/repo",
                 "name @ https://host/x.whl", "mail alice@example.com"):
        assert redact(text) == text


WORKFLOW = """name: wf-cred
steps:
  - name: first
    image: 127.0.0.1:5000/step:1
    env:
      - name: STORE_URL
        value: '{{ extension.store.url }}'
    extensions:
      - name: store
        service_resource: s3
"""
EXTENSIONS = f"""id: store
product: minio
version: 1.0.0
services:
  - id: s3
    resource: s3
    endpoints:
      - url: http://admin:{PASSWORD}@127.0.0.1:9
        configuration: {{MLFLOW_S3_ENDPOINT_URL: "http://127.0.0.1:9"}}
"""


def test_workflow_run_verbose_masks_the_extension_endpoint(tmp_path: Path, capsys) -> None:
    """`workflow run -v` says which extension each step gets and where, before it reaches
    the engine (absent here: the run then fails with one line)."""
    (tmp_path / "wf.yaml").write_text(WORKFLOW)
    (tmp_path / "ext.yaml").write_text(EXTENSIONS)
    code, out, err = run_main(capsys, "workflow", "run", str(tmp_path / "wf.yaml"),
                              "--extensions", str(tmp_path / "ext.yaml"), "-v",
                              "--engine", f"unix://{tmp_path}/absent.sock",
                              "--runs-dir", str(tmp_path / "runs"))
    assert code == 2 and "[first] extension store → store/s3 at " in err, err
    assert PASSWORD not in out + err
