"""Issue 28, point 8: values from outside (labels, lock lines, run tags, registry error
bodies) are printed with control characters and newlines escaped: they cannot clear the
screen, retitle the terminal, reorder text or forge a line of our output."""

from __future__ import annotations

import json
import os
import re

import pytest
from support.crafted import LOCK, SBOM, layer, run_main
from support.helpers import push_tiny_image, run_cli
from support.hostile_registry import HostileRegistry, answer

from mlflow_steps.core.terminal import escape, report

# Any control character but the newlines between our own lines; bidi controls too.
UNSAFE = re.compile("[\x00-\x09\x0b-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
HOSTILE = "\x1b[2J\x1b]0;pwned\x07\r\u202eevil\nFORGED line"


def assert_safe(text: str) -> None:
    assert not UNSAFE.search(text), repr(text)
    assert not any(line.startswith("FORGED") for line in text.splitlines()), text


def test_inspect_escapes_labels_and_lock_lines(registry, capsys) -> None:
    labels = {"io.mlflow-steps.env-tag": f"abc{HOSTILE}", "io.mlflow-steps.lock": f"/{LOCK}",
              "io.mlflow-steps.sbom": f"/{SBOM}", "io.mlflow-steps.strategy": HOSTILE,
              "org.opencontainers.image.base.name": f"python{HOSTILE}"}
    config = json.dumps({"config": {"Labels": labels}}).encode()
    # a lock is lines: its newlines are its own, but not its other control characters
    lock = "six==1.16.0\x1b]0;pwned\x07\u202eevil\nnumpy==2.0.0\x1b[31m\x85\n".encode()
    sbom = json.dumps({"bomFormat": f"CycloneDX{HOSTILE}", "specVersion": "1.6",
                       "components": []}).encode()
    push_tiny_image(registry.url, "terminal/labels", "1", config=config,
                    layers=(layer({LOCK: lock, SBOM: sbom}),))
    code, out, err = run_main(capsys, "inspect", f"{registry.address}/terminal/labels:1")
    assert code == 0, err
    assert_safe(out)
    assert "env tag    abc\\x1b[2J\\x1b]0;pwned\\x07\\r\\u202eevil\\nFORGED line" in out
    assert "  six==1.16.0\\x1b]0;pwned\\x07\\u202eevil" in out.splitlines()


def test_a_registry_error_body_is_escaped(capsys) -> None:
    body = json.dumps({"errors": [{"code": "DENIED", "message": f"denied{HOSTILE}"}]})
    with HostileRegistry() as hostile:
        hostile.on("GET", "/manifests/", answer(403, body, {"Content-Type": "application/json"}))
        code, out, err = run_main(capsys, "inspect", f"{hostile.address}/terminal/denied:1")
    assert code != 0 and out == ""
    assert_safe(err)
    assert len(err.splitlines()) == 1 and "DENIED: denied\\x1b[2J" in err, err


def test_trace_escapes_run_tags(mlflow_server) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(mlflow_server.url)
    experiment = client.create_experiment("terminal-trace")
    run = client.create_run(experiment, tags={"mlflow_steps.env_tag": f"abc{HOSTILE}",
                                              "mlflow_steps.tooling_version": HOSTILE})
    env = {**os.environ, "MLFLOW_TRACKING_URI": mlflow_server.url}
    result = run_cli("trace", f"runs:/{run.info.run_id}/model", "--no-lock", env=env,
                     timeout=300)
    assert result.returncode == 0, result.stderr
    assert_safe(result.stdout)
    assert len(result.stdout.splitlines()) == 4  # model, run, env tag, tooling


@pytest.mark.parametrize(("text", "expected"), [
    ("a\x1b[2Jb", "a\\x1b[2Jb"), ("one\ntwo\r", "one\\ntwo\\r"), ("\x85\u2028", "\\x85\\u2028"),
    ("\u202eevil", "\\u202eevil"), ("tab\there", "tab\\there"), ("ünïcode ok", "ünïcode ok"),
])
def test_escape_shows_every_control_character(text: str, expected: str) -> None:
    assert escape(text) == expected


def test_a_report_keeps_its_own_lines_only() -> None:
    assert report(["first", "second\nFORGED"]) == "first\nsecond\\nFORGED"


def test_the_runtime_step_escapes_parameters_in_its_own_lines(mlflow_server, tmp_path) -> None:
    """`run -v` prints the command with the user's parameters: escaped, one line each."""
    from support.helpers import run_cli
    from support.runtime_env import scripted, step_env

    job = "import mlflow\nmlflow.log_param('ok', 1)\n"
    env = step_env(tmp_path, mlflow_server.url, FUSEML_VERBOSE="true",
                   FUSEML_MLFLOW_ENTRYPOINT_ARGS=f"message='{HOSTILE}'")
    result = run_cli("run", str(scripted(tmp_path, job)), env=env)
    ours = [line for line in result.stderr.splitlines() if line.startswith("mlflow-steps:")]
    assert any("\\x1b[2J" in line for line in ours), result.stderr
    assert_safe("\n".join(ours))
    assert not any(line.startswith("FORGED") for line in result.stderr.splitlines())
