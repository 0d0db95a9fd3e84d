"""The token gate on a real server: API and UI need the bearer token, /health does not."""

from __future__ import annotations

import pytest
import requests
from devservices import TrackingServer
from mlflow.exceptions import MlflowException
from support.server_testing import tracking

TOKEN = "auth-test-token-9f8e7d6c5b4a"
API = "/api/2.0/mlflow/experiments/search?max_results=1"
PATHS = [API, "/ajax-api/2.0/mlflow/experiments/search?max_results=1", "/",
         "/static-files/favicon.ico", "/get-artifact?path=x&run_uuid=y"]


@pytest.fixture(scope="module")
def gated(stack_root):
    server = TrackingServer(stack_root / "auth", env={"MLFLOW_TRACKING_TOKEN": TOKEN}).start()
    yield server
    server.stop()


@pytest.mark.parametrize("path", PATHS)
@pytest.mark.parametrize("authorization", [None, "Bearer wrong-token", f"Basic {TOKEN}",
                                           f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", "Bearer"])
def test_missing_or_wrong_token_is_401(gated, path: str, authorization: str | None) -> None:
    headers = {"Authorization": authorization} if authorization else {}
    response = requests.get(gated.url + path, headers=headers, timeout=10)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert response.json()["error_code"] == "UNAUTHENTICATED"


@pytest.mark.parametrize("scheme", ["Bearer", "bearer"])
def test_right_token_passes_api_and_ui(gated, scheme: str) -> None:
    headers = {"Authorization": f"{scheme} {TOKEN}"}
    api = requests.get(gated.url + API, headers=headers, timeout=10)
    assert api.status_code == 200 and "experiments" in api.json()
    ui = requests.get(gated.url + "/", headers=headers, timeout=10)
    assert ui.status_code == 200 and "<html" in ui.text.lower()


def test_health_is_open(gated) -> None:
    assert requests.get(gated.url + "/health", timeout=10).status_code == 200


def test_mlflow_client_uses_tracking_token(gated) -> None:
    with tracking(gated.url, TOKEN) as client:
        experiment_id = client.create_experiment("with-token")
        run = client.create_run(experiment_id)
        client.log_metric(run.info.run_id, "loss", 0.25)
        assert client.get_run(run.info.run_id).data.metrics == {"loss": 0.25}
    with tracking(gated.url) as client, pytest.raises(MlflowException, match=r"401|UNAUTH"):
        client.search_experiments()
