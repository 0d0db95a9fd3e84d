"""The wire to one registry: TLS, scheme fallback, authorisation, retries, the one budget.

Laid out as go-containerregistry's ``remote/transport``: what a request goes through before
the distribution API sees its answer. Every wait (token endpoint, TLS fallback and retries
included) is bounded by one network budget (``retry.network_budget``); every failure is one
StepError naming the registry and the endpoint, with every credential masked
(``redaction.redact``). Transient failures (connection reset, 5xx, 429 with
``Retry-After``) of every request, uploads included, are retried under the one policy
(``retry.retry_policy``): request bodies are bytes, so a retried PATCH resends the same
chunk with the same ``Content-Range``.

Size: a little over 400 lines, because the auth challenge and token exchange sit here with
the TLS fallback and retries they run under; apart, each half would need the other's state.

Where credentials go (as go-containerregistry scopes them; Docker and containerd send them
wherever the challenge points): the registry's Authorization (Basic, or the Bearer token it
issued) only to the registry's own scheme, host and port; a blob-upload ``Location`` or a
redirect elsewhere is followed without it (urllib3 drops it on a redirect to another scheme,
host or port, so an https -> http downgrade on the same host loses it too), and a 401 from
elsewhere is that request's failure, never a reason to authorise there. The docker
credentials go to the token endpoint the registry's challenge names over HTTPS; over plain
HTTP only when the registry itself may be spoken to over plain HTTP (``--insecure-registries``,
loopback) and the endpoint is on the registry's host or is such a host itself. A refresh
token is POSTed without following redirects (a 307 would resend it elsewhere). Anything else
is refused with one line.
"""

from __future__ import annotations

import base64
import contextlib
import os
import re
import socket
import ssl
from collections.abc import Iterator
from urllib.parse import urlsplit

from urllib3 import BaseHTTPResponse
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    ProtocolError,
    ResponseError,
)
from urllib3.exceptions import SSLError as TlsError
from urllib3.util import make_headers

from mlflow_steps.core.deadline import Deadline
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact
from mlflow_steps.core.retry import (
    BUDGET_VARIABLE,
    MAX_REDIRECTS,
    RetryingHttp,
    causes,
    environment_proxy,
    is_timeout,
    network_budget,
    retry_after_seconds,
)
from mlflow_steps.image.credentials import Credentials, json_kind, load_credentials
from mlflow_steps.image.reference import DOCKER_HUB, is_insecure

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what may follow "Bearer " in a header
_PULLS = ("manifest HEAD", "manifest GET", "blob GET", "token endpoint")  # requests that pull
_METHODS = ("HEAD", "GET", "POST", "PUT", "PATCH")  # retried on transient failures
_DEFAULT_PORTS = {"http": 80, "https": 443}


class _TransportError(Exception):
    """No HTTP answer: ``reason`` says why (``timed_out``: the budget ran out; ``tls``)."""

    def __init__(self, reason: str, *, timed_out: bool = False, tls: bool = False,
                 peer_speaks_tls: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out
        self.tls = tls
        self.peer_speaks_tls = peer_speaks_tls  # it sent a certificate or a TLS alert


class Transport:
    """Requests to one registry: TLS fallback, auth challenges, retries, redacted failures."""

    def __init__(self, host: str, *, insecure_registries: tuple[str, ...],
                 verify: bool | str, environ: dict[str, str] | None, retries: int,
                 backoff: float, budget: float | None) -> None:
        self.host = host
        self.scheme = "https"
        self.insecure_registries = insecure_registries
        self.allow_plain_http = is_insecure(host, insecure_registries)
        self.verify = verify
        self.environ = dict(os.environ if environ is None else environ)
        self.retries = retries
        self.backoff = backoff
        self.budget = network_budget(self.environ) if budget is None else budget
        self.http = RetryingHttp(retries, backoff, methods=_METHODS, verify=verify,
                                 environ=self.environ)
        self._authorization: str | None = None
        self._secrets: set[str] = set()
        self._tls_probed = False

    @property
    def base_url(self) -> str:
        api_host = "registry-1.docker.io" if self.host == DOCKER_HUB else self.host
        return f"{self.scheme}://{api_host}"

    @property
    def source(self) -> str:
        """Who failed, for a StepError."""
        return f"registry {self.host}"

    @contextlib.contextmanager
    def redacting(self) -> Iterator[None]:
        """Errors raised inside, without any credential this transport has seen."""
        try:
            yield
        except StepError as exc:
            raise self._redacted(exc) from None

    def _redacted(self, exc: StepError) -> StepError:
        def clean(text: str | None) -> str | None:
            return None if text is None else redact(text, self._secrets)

        return StepError(clean(exc.detail) or "", source=clean(exc.source),
                         field=clean(exc.field), exit_code=exc.exit_code)

    def request(self, what: str, method: str, path: str, *, scope: str,
                deadline: Deadline, headers: dict[str, str] | None = None,
                data: bytes | None = None, stream: bool = False) -> BaseHTTPResponse:
        """One logical request: TLS fallback and authorisation share the deadline. ``path``
        is under the registry's base URL, or a URL the registry gave (an upload location)."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES), **(headers or {})}
        tls_failure: str | None = None
        tls_only = False
        authorised = False
        if self.allow_plain_http and self.scheme == "https" and not self._tls_probed:
            self._tls_probed = True
            failure = self._probe_tls(deadline)
            if failure:
                self.scheme = "http"
                tls_failure, tls_only = failure.reason, failure.peer_speaks_tls
        while True:
            url = path if "://" in path else f"{self.base_url}{path}"
            own = _origin(url) == _origin(self.base_url)  # else: no credentials go there
            if self._authorization and own:
                headers["Authorization"] = self._authorization
            else:
                headers.pop("Authorization", None)
            try:
                response = self._send(method, url, deadline, headers=headers, body=data,
                                      stream=stream)
            except _TransportError as exc:
                if exc.tls and self.allow_plain_http and self.scheme == "https":
                    self.scheme = "http"  # like Docker: insecure registries may lack TLS
                    tls_failure, tls_only = exc.reason, exc.peer_speaks_tls
                    continue
                raise self._transport_failure(exc, what, url, tls_failure) from None
            if tls_only and response.status == 400:  # a TLS server's answer to HTTP
                self.scheme = "https"
                raise StepError(f"{what} {url.replace('http://', 'https://', 1)}: TLS "
                                f"failure ({tls_failure}); over plain HTTP it answers "
                                "HTTP 400, so it needs TLS: give its CA with --registry-ca",
                                source=self.source)
            tls_failure = None
            if response.status == 401 and not own:
                raise StepError(f"{what} {url.split('?')[0]} answered HTTP 401: the registry "
                                "sent it to another host than its own, where no credentials "
                                "are sent", source=self.source, exit_code=1)
            if response.status == 401 and not authorised:
                authorised = True  # once per request: a cached token may have expired
                self._authorization = self._authorize(response, scope, deadline)
                if self._authorization:
                    continue
                headers.pop("Authorization", None)
            return response

    def _probe_tls(self, deadline: Deadline) -> _TransportError | None:
        """For a registry that may answer over plain HTTP: whether it speaks TLS at all, told
        by one unverified handshake, so that a registry without TLS costs no CA bundle load.
        The TLS failure (as a verified request reports it), else None: it speaks TLS, or the
        probe cannot tell (no connection, a proxy in between) and the request itself will."""
        url = urlsplit(self.base_url)
        if not url.hostname or environment_proxy(self.base_url, self.environ):
            return None
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        try:
            with socket.create_connection((url.hostname, url.port or 443),
                                          timeout=max(deadline.remaining(), 0.001)) as raw, \
                    context.wrap_socket(raw, server_hostname=url.hostname):
                return None
        except ssl.SSLError as exc:
            return _TransportError(reason(exc), tls=True, peer_speaks_tls=_peer_speaks_tls(exc))
        except OSError:
            return None

    def _transport_failure(self, exc: _TransportError, what: str, url: str,
                           tls_failure: str | None) -> StepError:
        if exc.tls:
            hint = "give its CA with --registry-ca" + (
                "" if self.allow_plain_http else " or list it in --insecure-registries")
            return StepError(f"{what} {url}: TLS failure ({exc.reason}); {hint}",
                             source=self.source)
        if exc.timed_out:
            problem = (f"did not answer within {self.budget:g} s ({BUDGET_VARIABLE} "
                       "sets the budget)")
        else:
            problem = exc.reason
        subject = f"{what} {url}" if url else what
        after = f" (after HTTPS failed: {tls_failure})" if tls_failure else ""
        return StepError(f"{subject} {problem}{after}", source=self.source)

    def _send(self, method: str, url: str, deadline: Deadline,
              **kwargs: object) -> BaseHTTPResponse:
        """One HTTP exchange (retried by the policy); no answer raises _TransportError."""
        if deadline.expired:
            raise _TransportError("", timed_out=True)
        failed_before = deadline.failed_attempts
        try:
            return self.http.request(method, url, deadline, **kwargs)  # type: ignore[arg-type]
        except HTTPError as exc:
            attempts = max(1, deadline.failed_attempts - failed_before)
            if _is_tls(exc):
                raise _TransportError(reason(exc), tls=True,
                                      peer_speaks_tls=_peer_speaks_tls(exc)) from None
            if is_timeout(exc) or deadline.expired:
                raise _TransportError(reason(exc), timed_out=True) from None
            inner = getattr(exc, "reason", None)
            if isinstance(inner, ResponseError) and "too many redirects" in str(inner):
                raise _TransportError(f"is a redirect loop (more than {MAX_REDIRECTS} "
                                      "redirects)") from None
            if isinstance(exc, (MaxRetryError, ProtocolError)) and not isinstance(
                    inner, ResponseError):
                raise _TransportError(f"unreachable after {attempts} attempt"
                                      f"{'s' if attempts > 1 else ''} ({reason(exc)})"
                                      ) from None
            raise _TransportError(f"failed ({reason(exc)})") from None

    def _authorize(self, response: BaseHTTPResponse, scope: str,
                   deadline: Deadline) -> str | None:
        challenge = response.headers.get("WWW-Authenticate", "").strip()
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        credentials = load_credentials(self.host, self.environ, timeout=deadline.remaining())
        if credentials:
            self._secrets.update(credentials.secrets())
        if scheme.lower() == "basic":
            if not credentials or not credentials.username:
                return None
            token = base64.b64encode(
                f"{credentials.username}:{credentials.password}".encode()).decode()
            self._secrets.add(token)
            return f"Basic {token}"
        if scheme.lower() == "bearer" and params.get("realm"):
            return f"Bearer {self._bearer_token(params, scope, credentials, deadline)}"
        return None

    def _bearer_token(self, params: dict[str, str], scope: str,
                      credentials: Credentials | None, deadline: Deadline) -> str:
        realm = params["realm"]
        if not re.match(r"https?://[^/\s]", realm):
            raise StepError(f"its WWW-Authenticate challenge names a token endpoint that is "
                            f"not an http(s) URL ({realm[:100]!r})", source=self.source)
        service = params.get("service", "")
        if credentials and not self._may_send_credentials(realm):
            raise StepError(f"its WWW-Authenticate challenge names a plain-HTTP token endpoint "
                            f"({realm[:100]}): credentials go to a token endpoint only over "
                            "HTTPS, or over HTTP on a host listed in --insecure-registries",
                            source=self.source, exit_code=1)
        if credentials and credentials.identity_token:
            what = f"token endpoint POST {realm}"
            kwargs: dict[str, object] = {"form": {
                "grant_type": "refresh_token", "refresh_token": credentials.identity_token,
                "service": service, "scope": scope.split()[0], "client_id": "mlflow-steps"},
                "redirect": False}
            method = "POST"
        else:
            what = f"token endpoint GET {realm}"
            kwargs = {"query": {"service": service, "scope": scope.split()}}
            if credentials and credentials.username:
                basic = make_headers(basic_auth=f"{credentials.username}:"
                                                f"{credentials.password}")
                self._secrets.add(basic["authorization"].removeprefix("Basic "))
                kwargs["headers"] = basic
            method = "GET"
        try:
            response = self._send(method, realm, deadline, **kwargs)
        except _TransportError as exc:
            if exc.tls:
                raise StepError(f"{what}: TLS failure ({exc.reason})",
                                source=self.source) from None
            raise self._transport_failure(exc, what, "", None) from None
        if response.status != 200:
            raise self.failure(response, what, deadline)
        try:
            body = response.json()
        except (ValueError, RecursionError):
            raise StepError(f"{what} answered HTTP 200 with a body that is not JSON",
                            source=self.source) from None
        if not isinstance(body, dict):
            raise StepError(f"{what} answered a JSON {json_kind(body)}, not an object with a "
                            "token", source=self.source)
        token = body.get("token") or body.get("access_token")
        if isinstance(token, str):
            self._secrets.add(token)
        if not token:
            raise StepError(f"{what} answered without a token ('token' or 'access_token')",
                            source=self.source)
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise StepError(f"{what} answered a token that is not a string of printable "
                            "characters", source=self.source)
        return token

    def _may_send_credentials(self, realm: str) -> bool:
        """Whether the docker credentials may go to the token endpoint ``realm``."""
        scheme, host, _ = _origin(realm)
        if scheme == "https":
            return True
        registry_host = _origin(self.base_url)[1]
        return self.allow_plain_http and (host == registry_host or is_insecure(
            urlsplit(realm).netloc, self.insecure_registries))

    def failure(self, response: BaseHTTPResponse, what: str,
                deadline: Deadline) -> StepError:
        status = response.status
        reason = " ".join((response.reason or "").split())[:80]
        detail = _registry_message(response)
        hints = {401: "check the credentials in DOCKER_CONFIG/config.json or its helper",
                 403: f"the credentials lack {'pull' if what.startswith(_PULLS) else 'push'} "
                      "rights",
                 405: "the registry refuses pushes (read-only, or a pull-through mirror)"}
        hint = hints.get(status, "")
        wait = retry_after_seconds(response.headers.get("Retry-After"))
        if wait and wait > deadline.remaining():
            hint = (f"it asks to retry after {wait:g} s, beyond what is left of the "
                    f"{self.budget:g} s network budget ({BUDGET_VARIABLE})")
        text = f"{what} answered HTTP {status}" + (f" {reason}" if reason else "")
        text += (f" ({detail})" if detail else "") + (f"; {hint}" if hint else "")
        return StepError(text, source=self.source)


def _origin(url: str) -> tuple[str, str, int | None]:
    """Scheme, host and port: what Authorization is scoped to."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or _DEFAULT_PORTS.get(scheme)
    except ValueError:
        port = None
    return scheme, (parts.hostname or "").lower(), port


def _registry_message(response: BaseHTTPResponse) -> str:
    """The registry's own error text (distribution ``errors`` or a token server's
    ``details``/``error``), never a raw body."""
    try:
        body = response.json()
    except (ValueError, RecursionError):
        return ""
    parts: list[str] = []
    if isinstance(body, dict):
        errors = body.get("errors")
        for error in errors if isinstance(errors, list) else []:
            if isinstance(error, dict):
                code, message = error.get("code"), error.get("message")
                parts.append(": ".join(str(part) for part in (code, message)
                                       if isinstance(part, (str, int)) and part != ""))
        for key in ("details", "error_description", "error", "message"):
            if not parts and isinstance(body.get(key), str):
                parts.append(body[key])
    return " ".join("; ".join(part for part in parts if part).split())[:300]


def _is_tls(exc: BaseException) -> bool:
    return isinstance(exc, TlsError) or any(
        isinstance(cause, ssl.SSLError) for cause in causes(exc))


def _peer_speaks_tls(exc: BaseException) -> bool:
    """Whether the TLS failure came from a TLS server (its certificate or alert), not from
    a server answering in something else (plain HTTP, garbage, a close)."""
    return any(isinstance(cause, ssl.SSLCertVerificationError) or re.match(
        r"(SSLV3|TLSV1\d*)_ALERT", str(getattr(cause, "reason", "") or ""))
        for cause in causes(exc) if isinstance(cause, ssl.SSLError))


def reason(exc: BaseException) -> str:
    """Why a request got no answer, in a few words (no URL, no OpenSSL source position)."""
    found = list(causes(exc))
    for cause in found:
        if isinstance(cause, ssl.SSLError):
            text = getattr(cause, "verify_message", None) and \
                f"certificate verify failed: {cause.verify_message}"
            return _short(text or str(cause))
    for cause in reversed(found):
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror.lower()[:200]
    return _short(str(found[-1]) or str(exc))


def _short(text: str) -> str:
    text = re.sub(r"\s*\(_ssl\.c:\d+\)", "", text)
    match = re.search(r"\] ([^'\"\)]+)", text)
    return (match.group(1) if match else (text.splitlines() or [""])[0]).strip()[:200]
