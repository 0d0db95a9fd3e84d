"""The one retry policy (mlflow_steps.retry) as other HTTP clients would reuse it."""

from __future__ import annotations

import time

import pytest
import requests
from faulty_proxy import ScriptedServer

from mlflow_steps.errors import StepError
from mlflow_steps.retry import (
    BUDGET_VARIABLE,
    Deadline,
    network_budget,
    retry_after_seconds,
    retrying_session,
)


@pytest.mark.parametrize(("value", "expected"), [
    (None, 30.0), ("", 30.0), ("2.5", 2.5), (" 3600 ", 3600.0)])
def test_network_budget(value: str | None, expected: float) -> None:
    assert network_budget({} if value is None else {BUDGET_VARIABLE: value}) == expected


@pytest.mark.parametrize("value", ["0", "-1", "3601", "soon", "nan"])
def test_bad_network_budget_is_one_line(value: str) -> None:
    with pytest.raises(StepError, match=rf"^{BUDGET_VARIABLE}: '{value}' is not a number of "
                                        "seconds between 0 and 3600$"):
        network_budget({BUDGET_VARIABLE: value})


@pytest.mark.parametrize(("value", "expected"), [
    ("7", 7), (" 7 ", 7), ("soon", None), ("", None), (None, None),
    ("Wed, 21 Oct 2015 07:28:00 GMT", 0)])  # a date in the past: no wait
def test_retry_after_seconds(value: str | None, expected: float | None) -> None:
    assert retry_after_seconds(value) == expected


def test_one_deadline_bounds_several_requests_and_their_retries() -> None:
    served: list[float] = []

    def script(srv: ScriptedServer, handler) -> None:
        served.append(time.monotonic())
        if handler.path == "/hold":
            srv.hold(handler)
        else:
            srv.answer(handler, 503)

    server = ScriptedServer(script)
    session = retrying_session(retries=100, backoff=0.1)
    try:
        deadline = Deadline(3)
        started = time.monotonic()
        answer = session.get(f"{server.url}/busy", timeout=deadline.timeout())
        assert answer.status_code == 503 and 3 < len(served) < 100  # retried, then gave up
        with pytest.raises(requests.ConnectionError):  # what is left bounds the next request
            session.get(f"{server.url}/hold", timeout=deadline.timeout())
        assert time.monotonic() - started < 15 and deadline.expired
        assert deadline.failed_attempts >= len(served) - 1
    finally:
        server.stop()


def test_post_is_not_retried_unless_asked() -> None:
    server = ScriptedServer(lambda srv, handler: srv.answer(handler, 503))
    try:
        for methods, expected in ((None, 1), (("POST",), 3)):
            server.requests.clear()
            session = retrying_session(retries=2, backoff=0.01, **(
                {"methods": methods} if methods else {}))
            session.post(server.url, data={"a": "b"}, timeout=Deadline(5).timeout())
            assert len(server.requests) == expected
    finally:
        server.stop()
