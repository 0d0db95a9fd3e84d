"""Issue 28, point 5: every network wait is bounded in total, not per read.

Slow-loris servers (tests/support/trickle_server.py) send their status line and headers, or
their body, a byte every 0.25 s: no per-read timeout ever fires, so only a deadline for the
whole request (MLFLOW_STEPS_NETWORK_TIMEOUT) ends it. Each must fail within the budget plus a
generous margin (interpreter and MLflow start-up), with one line; the servers give up after
60 s, so a client without the deadline fails these bounds. A refused connection fails in a
few seconds, not after the whole budget.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from support.helpers import run_cli
from support.runtime_env import example, results, step_env
from support.trickle_server import BODY, HEADERS, TrickleServer

from mlflow_steps.build.conda_install import fetch
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.retry import BUDGET_VARIABLE
from mlflow_steps.image.client import RegistryClient

BUDGET = 3
BOUND = BUDGET + 22  # within the budget; the margin: start-up on a busy CI (a trickle lasts 60 s)
REFUSED_BOUND = 5.0  # "fails fast": a few seconds, where the budget is 30 s
REPOSITORY, TAG = "probe/x", "v1"
MANIFEST = rf"/v2/{REPOSITORY}/manifests/"


def one_line_failure(result, *fragments: str) -> str:
    """The command's last stderr line, checked: a failure, one line, no traceback."""
    assert result.returncode in (1, 2), result.stderr[-3000:]
    assert "Traceback" not in result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("mlflow-steps: error: "), result.stderr[-3000:]
    for fragment in fragments:
        assert fragment in last, last
    return last


def timed_cli(*args: str, env: dict[str, str]):
    """In a process of its own: the bound holds until the process has ended (a call left
    waiting, MLflow's exit hooks)."""
    started = time.monotonic()
    result = run_cli(*args, env=env, timeout=120, process=True)
    return result, time.monotonic() - started


def cli_env(**extra: str) -> dict[str, str]:
    from os import environ

    return {**{k: v for k, v in environ.items() if not k.startswith("MLFLOW_")}, **extra}


@pytest.fixture
def refused_port() -> Iterator[int]:
    """A loopback port bound but not listening: every connection to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        yield sock.getsockname()[1]


# -- the registry: manifest HEAD and GET, its token endpoint --------------------------------

def test_registry_head_trickling_its_headers_is_bounded() -> None:
    with TrickleServer({MANIFEST: HEADERS}) as registry:
        started = time.monotonic()
        with pytest.raises(StepError) as caught:
            RegistryClient(registry.address, budget=BUDGET).manifest_digest(REPOSITORY, TAG)
        took = time.monotonic() - started
    assert f"manifest HEAD http://{registry.address}{MANIFEST}{TAG} did not answer within " \
           f"{BUDGET} s ({BUDGET_VARIABLE} sets the budget)" in str(caught.value)
    assert ("HEAD", f"{MANIFEST}{TAG}") in registry.seen
    assert took < BOUND, took


@pytest.mark.parametrize("mode", [HEADERS, BODY])
def test_inspect_against_a_registry_trickling_the_manifest(mode: str) -> None:
    with TrickleServer({MANIFEST: mode}) as registry:
        result, took = timed_cli("inspect", f"{registry.address}/{REPOSITORY}:{TAG}",
                                 env=cli_env(**{BUDGET_VARIABLE: str(BUDGET)}))
    one_line_failure(result, f"manifest GET http://{registry.address}{MANIFEST}{TAG} did "
                             f"not answer within {BUDGET} s")
    assert took < BOUND, took


@pytest.mark.parametrize("mode", [HEADERS, BODY])
def test_inspect_against_a_token_endpoint_that_trickles(mode: str) -> None:
    with TrickleServer({"/token": mode}) as tokens:
        challenge = (f'Bearer realm="{tokens.url}/token",service="svc",'
                     f'scope="repository:{REPOSITORY}:pull"')

        def unauthorised(handler) -> None:
            handler.send_response(401)
            handler.send_header("WWW-Authenticate", challenge)
            handler.send_header("Content-Length", "0")
            handler.end_headers()

        with TrickleServer({"/v2/": unauthorised}) as registry:
            result, took = timed_cli("inspect", f"{registry.address}/{REPOSITORY}:{TAG}",
                                     env=cli_env(**{BUDGET_VARIABLE: str(BUDGET)}))
    one_line_failure(result, f"token endpoint GET {tokens.url}/token did not answer within "
                             f"{BUDGET} s")
    assert any(path.startswith("/token") for _, path in tokens.seen)
    assert took < BOUND, took


def test_refused_registry_fails_fast(refused_port: int) -> None:
    """The default budget (30 s) and retries: a refused connection is not waited on."""
    started = time.monotonic()
    with pytest.raises(StepError, match=r"unreachable after 3 attempts \(connection refused\)"):
        RegistryClient(f"127.0.0.1:{refused_port}", environ={}).manifest_digest(REPOSITORY, TAG)
    assert time.monotonic() - started < REFUSED_BOUND


# -- conda downloads --------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [HEADERS, BODY])
def test_conda_download_from_a_trickling_channel_is_bounded(tmp_path: Path, mode: str) -> None:
    with TrickleServer({r"\.conda$": mode}) as channel:
        record = {"name": "pkg", "url": f"{channel.url}/linux-64/pkg-1-0.conda",
                  "sha256": "0" * 64}
        started = time.monotonic()
        with pytest.raises(StepError) as caught:
            fetch([record], tmp_path, {BUDGET_VARIABLE: str(BUDGET)}, "conda.yaml", [])
        took = time.monotonic() - started
    assert str(caught.value) == (
        f"conda channel: cannot fetch {channel.url}/linux-64/pkg-1-0.conda: no answer within "
        f"{BUDGET} s ({BUDGET_VARIABLE} sets the budget)")
    assert took < BOUND, took


# -- the tracking server ----------------------------------------------------------------------

def _runs(url: str, experiment: str) -> list:
    from mlflow import MlflowClient

    client = MlflowClient(url)
    found = client.get_experiment_by_name(experiment)
    return client.search_runs([found.experiment_id]) if found else []


@pytest.mark.parametrize(("endpoint", "mode", "run_created"), [
    ("/experiments/get-by-name", BODY, False),
    ("/runs/set-tag", HEADERS, True),
    ("/runs/set-tag", BODY, True),
])
def test_run_against_a_tracking_server_that_trickles(mlflow_server, tmp_path: Path,
                                                     endpoint: str, mode: str,
                                                     run_created: bool) -> None:
    """The pre-flight check passes (the real server answers it); a later call trickles."""
    experiment = f"trickle-{tmp_path.name}"
    with TrickleServer({endpoint: mode}, upstream=mlflow_server.url) as tracking:
        env = step_env(tmp_path, tracking.url, FUSEML_MLFLOW_EXPERIMENT=experiment,
                       **{BUDGET_VARIABLE: str(BUDGET)})
        result, took = timed_cli("run", str(example(tmp_path)), env=env)
    one_line_failure(result, f"mlflow: API request to {tracking.url}/api/2.0/mlflow"
                             f"{endpoint} failed: no answer")
    assert took < BOUND, took
    assert results(tmp_path) == {}  # no step output
    runs = _runs(mlflow_server.url, experiment)
    assert [run.info.status for run in runs] == (["FAILED"] if run_created else [])


def test_run_against_a_refusing_tracking_server_fails_fast(tmp_path: Path,
                                                           refused_port: int) -> None:
    """Today's 32 s: the default budget (30 s) spent on retrying a refused connection."""
    env = step_env(tmp_path, f"http://127.0.0.1:{refused_port}")
    result, took = timed_cli("run", str(example(tmp_path)), env=env)
    one_line_failure(result, f"tracking server http://127.0.0.1:{refused_port}: Connection "
                             "refused (3 attempts): check the URL and that the server is up")
    assert took < BOUND, took  # the interpreter and MLflow start, then ~1.5 s of retries
    assert results(tmp_path) == {}
