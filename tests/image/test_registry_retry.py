"""The one retry policy (mlflow_steps.core.retry) as other HTTP clients would reuse it."""

from __future__ import annotations

import base64
import time

import pytest
from support.faulty_proxy import ScriptedServer
from urllib3.exceptions import MaxRetryError

from mlflow_steps.core.deadline import Deadline
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.retry import (
    BUDGET_VARIABLE,
    RetryingHttp,
    environment_proxy,
    network_budget,
    retry_after_seconds,
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
    http = RetryingHttp(retries=100, backoff=0.1)
    try:
        deadline = Deadline(3)
        started = time.monotonic()
        answer = http.request("GET", f"{server.url}/busy", deadline)
        assert answer.status == 503 and 3 < len(served) < 100  # retried, then gave up
        with pytest.raises(MaxRetryError):  # what is left bounds the next request
            http.request("GET", f"{server.url}/hold", deadline)
        assert time.monotonic() - started < 15 and deadline.expired
        assert deadline.failed_attempts >= len(served) - 1
    finally:
        server.stop()


def test_post_is_not_retried_unless_asked() -> None:
    server = ScriptedServer(lambda srv, handler: srv.answer(handler, 503))
    try:
        for methods, expected in ((None, 1), (("POST",), 3)):
            server.requests.clear()
            http = RetryingHttp(retries=2, backoff=0.01, **(
                {"methods": methods} if methods else {}))
            http.request("POST", server.url, Deadline(5), form={"a": "b"})
            assert len(server.requests) == expected
    finally:
        server.stop()


@pytest.mark.parametrize(("url", "environ", "expected"), [
    ("http://reg:5000/v2/", {}, None),
    ("http://reg:5000/v2/", {"HTTP_PROXY": "proxy:3128"}, "http://proxy:3128"),
    ("http://reg:5000/v2/", {"http_proxy": "http://p:1", "HTTP_PROXY": "http://q:1"},
     "http://p:1"),
    ("https://reg/v2/", {"HTTP_PROXY": "http://p:1"}, None),
    ("https://reg/v2/", {"ALL_PROXY": "http://p:1"}, "http://p:1"),
    ("https://reg/v2/", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other,reg"}, None),
    ("https://a.reg/v2/", {"HTTPS_PROXY": "http://p:1", "no_proxy": ".reg"}, None),
    ("https://reg/v2/", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "other"}, "http://p:1"),
])
def test_environment_proxy(url: str, environ: dict[str, str], expected: str | None) -> None:
    assert environment_proxy(url, environ) == expected


def test_proxy_and_url_credentials_as_requests_sends_them() -> None:
    """A forward proxy from the environment gets the absolute URL and its credentials; a
    user:password in the URL becomes basic auth for the server, never part of the URL."""
    proxy = ScriptedServer(lambda srv, handler: srv.answer(handler, 200, "via proxy"))
    try:
        http = RetryingHttp(environ={"HTTP_PROXY": f"http://pu:p%40ss@{proxy.address}"})
        answer = http.request("GET", "http://alice:s3cret@registry.invalid:5000/v2/", Deadline(5))
        assert answer.status == 200 and answer.data == b"via proxy"
        (method, path, sent), = proxy.requests
        headers = {name.lower(): value for name, value in sent.items()}
        assert (method, path) == ("GET", "http://registry.invalid:5000/v2/")
        assert headers["proxy-authorization"] == "Basic " + base64.b64encode(b"pu:p@ss").decode()
        assert headers["authorization"] == "Basic " + base64.b64encode(b"alice:s3cret").decode()
        bypass = RetryingHttp(environ={"HTTP_PROXY": f"http://{proxy.address}",
                                       "NO_PROXY": "registry.invalid"}, retries=0)
        with pytest.raises(MaxRetryError):  # no proxy: the name does not resolve
            bypass.request("GET", "http://registry.invalid:5000/v2/", Deadline(5))
        assert len(proxy.requests) == 1
    finally:
        proxy.stop()


def test_parallel_requests_keep_their_connections(caplog) -> None:
    """Parallel uploads share one client: its pool keeps their connections (urllib3's
    default of one per host would drop and re-open them, with a warning each time)."""
    from concurrent.futures import ThreadPoolExecutor

    def slow_ok(srv: ScriptedServer, handler) -> None:
        time.sleep(0.2)
        srv.answer(handler, 200, "ok")

    server = ScriptedServer(slow_ok)
    http = RetryingHttp()
    try:
        with ThreadPoolExecutor(max_workers=4) as pool:
            answers = list(pool.map(lambda _: http.request("GET", server.url, Deadline(10)),
                                    range(8)))
        assert [answer.status for answer in answers] == [200] * 8
        assert "Connection pool is full" not in caplog.text
    finally:
        server.stop()
