"""Registries that fail: every failure is one bounded, actionable, credential-free line.

Real loopback servers only: the plain docker-registry fixture (behind faulty proxies),
scripted HTTP servers, silent ports and a TLS sniffer (tests/support/faulty_proxy.py).
"""

from __future__ import annotations

import json
import re
import ssl
import time
from pathlib import Path

import pytest
from support.faulty_proxy import TLS_MODES, FaultyProxy, ScriptedServer, SilentServer, TlsSniffer
from support.helpers import push_tiny_image

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.retry import BUDGET_VARIABLE
from mlflow_steps.image.client import RegistryClient

BOUND = 15.0  # generous: proves a 3 s budget bounds the wait, not how fast it is
BUDGET_ENV = {BUDGET_VARIABLE: "3"}
MANIFEST = "/v2/probe/x/manifests/v1"


def one_line(exc: pytest.ExceptionInfo[StepError], host: str) -> str:
    """The error's line, checked to be one actionable line naming the registry."""
    text = str(exc.value)
    assert "\n" not in text and "Traceback" not in text, text
    assert text.startswith(f"registry {host}: "), text
    for fragment in ("Expecting value", "Exceeded 30 redirects", "HTTPConnectionPool",
                     "Max retries exceeded", "object at 0x", "_ssl.c"):
        assert fragment not in text, text
    return text


def failing(client: RegistryClient, repository: str = "probe/x", tag: str = "v1"):
    """(error line, seconds taken) of a manifest check that must fail."""
    started = time.monotonic()
    with pytest.raises(StepError) as caught:
        client.manifest_digest(repository, tag)
    return one_line(caught, client.host), time.monotonic() - started


# -- 1. an unresponsive registry is bounded by the network budget ---------------------------

@pytest.mark.parametrize("mode", ["accept", "blackhole"])
def test_unresponsive_registry_is_bounded_by_the_budget(mode: str) -> None:
    server = SilentServer(mode)
    try:
        assert server.works, "this kernel completes connects beyond a full accept queue"
        text, took = failing(RegistryClient(server.address, environ=BUDGET_ENV))
    finally:
        server.stop()
    assert re.fullmatch(rf"registry {server.address}: manifest HEAD https://{server.address}"
                        rf"{MANIFEST} did not answer within 3 s \({BUDGET_VARIABLE} sets the "
                        r"budget\)", text), text
    assert took < BOUND


def test_registry_that_holds_plain_http_requests_is_bounded() -> None:
    """An insecure registry: TLS fails at once, plain HTTP never answers."""
    server = ScriptedServer(lambda srv, handler: srv.hold(handler))
    try:
        text, took = failing(RegistryClient(server.address, budget=3))
    finally:
        server.stop()
    assert f"manifest HEAD http://{server.address}{MANIFEST} did not answer within 3 s" in text
    assert "(after HTTPS failed: " in text
    assert took < BOUND


def _bearer_registry(realm: str) -> ScriptedServer:
    challenge = f'Bearer realm="{realm}",service="svc",scope="repository:probe/x:pull"'

    def script(server: ScriptedServer, handler) -> None:
        if handler.headers.get("Authorization"):
            server.answer(handler, 404)
        else:
            server.answer(handler, 401, headers={"WWW-Authenticate": challenge})

    return ScriptedServer(script)


def test_token_endpoint_that_never_answers_is_bounded() -> None:
    tokens = ScriptedServer(lambda srv, handler: srv.hold(handler))
    registry = _bearer_registry(f"{tokens.url}/token")
    try:
        text, took = failing(RegistryClient(registry.address, budget=3))
    finally:
        registry.stop()
        tokens.stop()
    assert f"token endpoint GET {tokens.url}/token did not answer within 3 s" in text
    assert took < BOUND


def test_persistent_503_is_bounded_by_the_budget_not_the_retry_count(registry) -> None:
    proxy = FaultyProxy(registry.url, failures=1000, status=503)
    try:
        text, took = failing(RegistryClient(proxy.address, retries=50, backoff=0.5, budget=3))
    finally:
        proxy.stop()
    assert "answered HTTP 503" in text
    assert took < BOUND and 1 < proxy.seen < 50


def test_refused_connections_are_bounded_by_the_budget() -> None:
    from devstack import free_port

    host = f"127.0.0.1:{free_port()}"
    text, took = failing(RegistryClient(host, retries=1000, backoff=0.2, budget=3))
    assert re.search(r"unreachable after \d+ attempts \(connection refused\)", text), text
    assert took < BOUND


# -- 429 and Retry-After ----------------------------------------------------------------------

@pytest.mark.parametrize("retry_after", ["1", "soon"])  # unparsable: plain backoff
def test_429_waits_retry_after_then_succeeds(registry, retry_after: str) -> None:
    digest = push_tiny_image(registry.url, "probe/busy", "v1")
    proxy = FaultyProxy(registry.url, failures=1, status=429,
                        headers={"Retry-After": retry_after})
    try:
        started = time.monotonic()
        assert RegistryClient(proxy.address, backoff=0.05).manifest_digest(
            "probe/busy", "v1") == digest
        assert proxy.seen == 2
        if retry_after == "1":
            assert time.monotonic() - started >= 0.9  # the server's wish was honoured
    finally:
        proxy.stop()


def test_retry_after_beyond_the_budget_fails_at_once(registry) -> None:
    proxy = FaultyProxy(registry.url, failures=1000, status=429,
                        headers={"Retry-After": "3600"})
    try:
        text, took = failing(RegistryClient(proxy.address, budget=3))
    finally:
        proxy.stop()
    assert "answered HTTP 429 Too Many Requests; it asks to retry after 3600 s, beyond what " \
           f"is left of the 3 s network budget ({BUDGET_VARIABLE})" in text
    assert proxy.seen == 1 and took < BOUND


# -- 2. token endpoints and registries answering nonsense ------------------------------------

TOKEN_ANSWERS = {  # name: (status, body, what the line says)
    "json list": (200, "[]", "answered a JSON list, not an object with a token"),
    "json list of tokens": (200, '["abc"]', "answered a JSON list"),
    "json string": (200, '"abc"', "answered a JSON string"),
    "html": (200, "<html><body>login</body></html>", "with a body that is not JSON"),
    "empty body": (200, "", "with a body that is not JSON"),
    "no token": (200, '{"expires_in": 300}', "answered without a token"),
    "null token": (200, '{"token": null}', "answered without a token"),
    "number token": (200, '{"token": 12345}', "a token that is not a string"),
    "token with a newline": (200, json.dumps({"token": "abc\r\nX-Evil: 1"}),
                             "not a string of printable characters"),
    "html 500": (500, "<html>Internal error</html>", "answered HTTP 500 Internal Server Error"),
    "json list 401": (401, "[1, 2]", "answered HTTP 401 Unauthorized; check the credentials"),
    "errors not a list": (403, '{"errors": "nope"}', "answered HTTP 403 Forbidden; the cred"),
    "errors junk": (403, '{"errors": [1, null, {"code": 5}, {"code": "DENIED", "message": '
                         '"no way"}]}', "answered HTTP 403 Forbidden (5; DENIED: no way)"),
    "details": (401, '{"details": "incorrect username or password"}',
                "answered HTTP 401 Unauthorized (incorrect username or password)"),
}


@pytest.mark.parametrize("name", TOKEN_ANSWERS)
def test_token_endpoint_nonsense_is_one_line(name: str) -> None:
    status, body, expected = TOKEN_ANSWERS[name]
    tokens = ScriptedServer(lambda srv, handler: srv.answer(
        handler, status, body, {"Content-Type": "application/json"}))
    registry = _bearer_registry(f"{tokens.url}/token")
    try:
        text, _ = failing(RegistryClient(registry.address, budget=5, backoff=0.01))
    finally:
        registry.stop()
        tokens.stop()
    assert f"token endpoint GET {tokens.url}/token" in text, text
    assert expected in text, text


def test_token_endpoint_redirect_loop() -> None:
    tokens = ScriptedServer(lambda srv, handler: srv.answer(
        handler, 302, headers={"Location": handler.path}))
    registry = _bearer_registry(f"{tokens.url}/token")
    try:
        text, _ = failing(RegistryClient(registry.address, budget=5, backoff=0.01))
    finally:
        registry.stop()
        tokens.stop()
    assert f"token endpoint GET {tokens.url}/token is a redirect loop (more than 30 " \
           "redirects)" in text


def test_token_endpoint_refusing_connections() -> None:
    from devstack import free_port

    realm = f"http://127.0.0.1:{free_port()}/token"
    registry = _bearer_registry(realm)
    try:
        text, _ = failing(RegistryClient(registry.address, retries=2, backoff=0.01))
    finally:
        registry.stop()
    assert f"token endpoint GET {realm} unreachable after 3 attempts (connection refused)" \
        in text


@pytest.mark.parametrize("realm", ["/token", "ftp://127.0.0.1/token", "not a url"])
def test_challenge_naming_no_http_token_endpoint(realm: str) -> None:
    registry = _bearer_registry(realm)
    try:
        text, _ = failing(RegistryClient(registry.address, budget=5, backoff=0.01))
    finally:
        registry.stop()
    assert "names a token endpoint that is not an http(s) URL" in text


REGISTRY_ANSWERS = {  # name: (status, headers, body, what the line says)
    "html 500": (500, {}, "<html>down</html>", "answered HTTP 500 Internal Server Error"),
    "json list 403": (403, {"Content-Type": "application/json"}, "[]",
                      "answered HTTP 403 Forbidden; the credentials lack pull rights"),
    "text 400": (400, {}, "bad", "answered HTTP 400 Bad Request"),
    "teapot": (418, {}, "", "answered HTTP 418"),
    "401 without challenge": (401, {}, "", "answered HTTP 401 Unauthorized; check the cred"),
    "unknown challenge": (401, {"WWW-Authenticate": "Negotiate"}, "", "answered HTTP 401"),
    "no digest": (200, {}, "", "answered HTTP 200 with no Docker-Content-Digest header"),
    "bad digest": (200, {"Docker-Content-Digest": "sha256 nope"}, "",
                   "a Docker-Content-Digest that is not a digest ('sha256 nope')"),
    "redirect loop": (307, {"Location": MANIFEST}, "", "is a redirect loop (more than 30"),
}


@pytest.mark.parametrize("name", REGISTRY_ANSWERS)
def test_registry_nonsense_is_one_line(name: str) -> None:
    status, headers, body, expected = REGISTRY_ANSWERS[name]
    registry = ScriptedServer(lambda srv, handler: srv.answer(handler, status, body, headers))
    try:
        text, _ = failing(RegistryClient(registry.address, budget=5, backoff=0.01))
    finally:
        registry.stop()
    assert f"manifest HEAD http://{registry.address}{MANIFEST}" in text, text
    assert expected in text, text


# -- 5. insecure registries fall back to plain HTTP on any TLS failure -----------------------

@pytest.mark.parametrize("mode", TLS_MODES)
def test_insecure_registry_falls_back_on_any_tls_failure(registry, tmp_path: Path,
                                                         mode: str) -> None:
    digest = push_tiny_image(registry.url, "probe/sniffed", "v1")
    sniffer = TlsSniffer(registry.address, mode, tmp_path)
    try:
        client = RegistryClient(sniffer.address, budget=10)  # loopback: insecure
        assert client.manifest_digest("probe/sniffed", "v1") == digest
        # The unverified probe completes a handshake only with a certificate; the verified
        # request then fails on it. Every other failure is the probe's own.
        handshakes = 2 if mode == "untrusted-certificate" else 1
        assert client.transport.scheme == "http" and sniffer.handshakes == handshakes
        assert client.manifest_digest("probe/sniffed", "v2") is None
        assert sniffer.handshakes == handshakes  # the fallback is remembered
    finally:
        sniffer.stop()


def test_plain_http_registry_costs_no_ca_bundle(registry, monkeypatch) -> None:
    """An insecure registry without TLS is told by an unverified handshake: no verified
    attempt, so no CA bundle is loaded (tens of ms of the skip decision)."""
    digest = push_tiny_image(registry.url, "probe/no-ca", "v1")
    loads = []
    original = ssl.SSLContext.load_verify_locations

    def counted(self, *args, **kwargs):  # type: ignore[no-untyped-def]
        loads.append(args or kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(ssl.SSLContext, "load_verify_locations", counted)
    client = RegistryClient(registry.address, budget=10)
    assert client.manifest_digest("probe/no-ca", "v1") == digest
    assert client.transport.scheme == "http" and loads == []


@pytest.mark.parametrize("mode", TLS_MODES)
def test_secure_registry_never_falls_back(registry, tmp_path: Path, mode: str) -> None:
    sniffer = TlsSniffer(registry.address, mode, tmp_path)
    try:
        client = RegistryClient(sniffer.address, budget=10)
        client.transport.allow_plain_http = False  # as for a registry not listed insecure
        text, _ = failing(client, "probe/sniffed")
    finally:
        sniffer.stop()
    assert re.search(r"manifest HEAD https://\S+: TLS failure \([^)]+\); give its CA with "
                     r"--registry-ca or list it in --insecure-registries$", text), text
    assert client.transport.scheme == "https" and sniffer.handshakes == 1


def test_tls_failure_reasons_are_specific(registry, tmp_path: Path) -> None:
    reasons = {}
    for mode in TLS_MODES:
        sniffer = TlsSniffer(registry.address, mode, tmp_path)
        try:
            client = RegistryClient(sniffer.address, budget=10)
            client.transport.allow_plain_http = False
            text, _ = failing(client)
        finally:
            sniffer.stop()
        reasons[mode] = re.search(r"TLS failure \(([^)]+)\)", text)[1]
    assert reasons["untrusted-certificate"].startswith("certificate verify failed")
    assert "handshake failure" in reasons["handshake-alert"]
    assert len(set(reasons.values())) >= 3, reasons
