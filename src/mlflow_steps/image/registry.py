"""OCI distribution client: Docker config.json credentials, auth challenges, manifest checks.

Credentials are found as the docker CLI finds them: ``credHelpers[host]``, else
``credsStore``, else the ``auths`` entry. Every wait on the registry (token endpoint, TLS
fallback and retries included) is bounded by one network budget (``retry.network_budget``);
every failure is one StepError naming the registry and the endpoint, with every credential
masked (``redaction.redact``).

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

Everything fetched by digest (manifests, index children, blobs) is checked against that
digest before use; after a manifest PUT the registry's ``Docker-Content-Digest`` (or, when
it sends none, the digest it then serves under the reference) must be that of what was
sent. Transient failures (connection reset, 5xx, 429 with ``Retry-After``) of every
request, uploads included, are retried under the one policy (``retry.retry_policy``):
request bodies are bytes, so a retried PATCH resends the same chunk with the same
``Content-Range``.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import socket
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

from urllib3 import BaseHTTPResponse
from urllib3.exceptions import (
    HTTPError,
    MaxRetryError,
    ProtocolError,
    ResponseError,
)
from urllib3.exceptions import SSLError as TlsError
from urllib3.util import make_headers

from mlflow_steps.core.cache import temporary_beside
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact
from mlflow_steps.core.retry import (
    BACKOFF,
    BUDGET_VARIABLE,
    MAX_REDIRECTS,
    RETRIES,
    Deadline,
    RetryingHttp,
    causes,
    environment_proxy,
    is_timeout,
    network_budget,
    retry_after_seconds,
)
from mlflow_steps.image.reference import DOCKER_HUB, is_insecure

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
HUB_INDEX = "https://index.docker.io/v1/"  # the docker CLI's key for Docker Hub credentials
_HUB_HOSTS = (DOCKER_HUB, "index.docker.io", "registry-1.docker.io")
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_TOKEN = re.compile(r"[\x21-\x7e]+")  # what may follow "Bearer " in a header
_DIGEST = re.compile(r"[a-z0-9]+(?:[+._-][a-z0-9]+)*:[a-zA-Z0-9=_-]+")
_NOT_FOUND = "credentials not found"  # docker-credential-helpers' "not found" answer
UPLOAD_FLOOR_BYTES_PER_SECOND = 1 << 20  # an upload's budget grows by 1 s per MiB
UPLOAD_CHUNK = 64 << 20  # larger blobs go up in chunks of this size (bounded memory)
_PULLS = ("manifest HEAD", "manifest GET", "blob GET", "token endpoint")  # requests that pull
_VERIFIABLE = ("sha256", "sha512")  # digest algorithms content is checked against (OCI's)
_METHODS = ("HEAD", "GET", "POST", "PUT", "PATCH")  # retried on transient failures
_DEFAULT_PORTS = {"http": 80, "https": 443}


def docker_config_dir(environ: dict[str, str]) -> Path:
    """Where Docker clients read config.json."""
    return Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


@dataclass(frozen=True)
class Credentials:
    """Username/password or an identity (refresh) token for one registry."""

    username: str = ""
    password: str = ""
    identity_token: str = ""

    def secrets(self) -> list[str]:
        """The values no message may show (the password also as Basic auth encodes it)."""
        basic = base64.b64encode(f"{self.username}:{self.password}".encode()).decode()
        return [value for value in (self.password, self.identity_token, basic if self.password
                                    else "") if value]


def load_credentials(host: str, environ: dict[str, str], *,
                     timeout: float | None = None) -> Credentials | None:
    """Credentials for ``host`` from config.json, in the docker CLI's order: the helper
    ``credHelpers[host]`` names, else the ``credsStore`` helper, else the ``auths`` entry.
    A helper, once configured for the host, is the only source (as for the docker CLI):
    its "credentials not found" means anonymous, not a fall back to ``auths``. A helper
    may run ``timeout`` seconds (default: the network budget)."""
    path = docker_config_dir(environ) / "config.json"
    config = _read_config(path)
    if config is None:
        return None
    helper = _configured_helper(config, host, path)
    if helper:
        seconds = network_budget(environ) if timeout is None else timeout
        return _helper_credentials(*helper, host, path, environ, seconds)
    return _auths_credentials(config, host, path)


def _read_config(path: Path) -> dict | None:
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not JSON"
        raise StepError(f"unreadable Docker config ({reason})", source=str(path)) from None
    if not isinstance(config, dict):
        raise StepError(f"Docker config is a JSON {_kind(config)}, not an object",
                        source=str(path))
    return config


def _kind(value: object) -> str:
    return {list: "list", str: "string", int: "number", float: "number", bool: "boolean",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)


def _lookup_keys(host: str) -> tuple[str, ...]:
    return (HUB_INDEX, *_HUB_HOSTS) if host in _HUB_HOSTS else (host,)


def _hostname(key: str) -> str:
    """The docker CLI's ConvertToHostname: scheme and path dropped."""
    for prefix in ("http://", "https://"):
        if key.startswith(prefix):
            key = key[len(prefix):]
            break
    return key.split("/", 1)[0]


def _configured_helper(config: dict, host: str, path: Path) -> tuple[str, str] | None:
    """(helper name, config field) when a credential helper serves ``host``."""
    helpers = config.get("credHelpers")
    if helpers is None:
        helpers = {}
    if not isinstance(helpers, dict):
        raise StepError(f"must map registry hosts to helper names, not a {_kind(helpers)}",
                        source=str(path), field="credHelpers")
    for key in _lookup_keys(host):
        if key in helpers:
            name, field = helpers[key], f"credHelpers.{key}"
            break
    else:
        name, field = config.get("credsStore"), "credsStore"
    if name is None or name == "":  # an empty credHelpers entry opts the host out
        return None
    if not isinstance(name, str) or not _HELPER_NAME.fullmatch(name):
        shown = repr(name) if isinstance(name, str) else f"a {_kind(name)}"
        raise StepError(f"{shown[:60]} is not a credential helper name (docker-credential-NAME)",
                        source=str(path), field=field)
    return name, field


def _auths_credentials(config: dict, host: str, path: Path) -> Credentials | None:
    auths = config.get("auths")
    if auths is None:
        return None
    if not isinstance(auths, dict):
        raise StepError(f"must map registries to credentials, not a {_kind(auths)}",
                        source=str(path), field="auths")
    keys = [key for key in _lookup_keys(host) if key in auths]
    hostnames = {_hostname(key) for key in _lookup_keys(host)}
    keys += [key for key in auths if _hostname(key) in hostnames]
    if not keys:
        return None
    key = keys[0]
    entry = auths[key]
    field = f"auths.{key}"
    if not isinstance(entry, dict):
        raise StepError(f"must be an object with auth or username/password, not a "
                        f"{_kind(entry)}", source=str(path), field=field)
    for name in ("auth", "username", "password", "identitytoken"):
        if not isinstance(entry.get(name, ""), str):
            raise StepError(f"must be a string, not a {_kind(entry[name])}", source=str(path),
                            field=f"{field}.{name}")
    username, password = entry.get("username", ""), entry.get("password", "")
    if entry.get("auth"):
        username, password = _decode_auth(entry["auth"], path, f"{field}.auth")
    if entry.get("identitytoken"):
        return Credentials(username=username, identity_token=entry["identitytoken"])
    if not username and not password:
        return None  # an empty entry: docker login with a credential store writes these
    return Credentials(username, password)


def _decode_auth(value: str, path: Path, field: str) -> tuple[str, str]:
    try:
        decoded = base64.b64decode(value, validate=True).decode()
    except (binascii.Error, ValueError):
        decoded = ""
    username, colon, password = decoded.partition(":")
    if not colon or not username:
        raise StepError("is not base64 of user:password", source=str(path),
                        field=field) from None
    return username, password


def _helper_credentials(name: str, field: str, host: str, path: Path,
                        environ: dict[str, str], seconds: float) -> Credentials | None:
    """The docker-credential-helpers protocol: ``get``, server URL on stdin, JSON out."""
    program = f"docker-credential-{name}"
    env = {**os.environ, **environ}
    executable = shutil.which(program, path=env.get("PATH"))
    where = {"source": str(path), "field": field}
    if executable is None:
        raise StepError(f"credential helper {program} is not on PATH", **where)
    server = HUB_INDEX if host in _HUB_HOSTS else host
    try:
        process = subprocess.Popen([executable, "get"], stdin=subprocess.PIPE,
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                                   start_new_session=True)
    except OSError as exc:
        raise StepError(f"cannot run {program} ({exc.strerror})", **where) from None
    try:
        out, err = process.communicate(server.encode(), timeout=max(seconds, 0.01))
    except subprocess.TimeoutExpired:
        _kill_group(process)
        raise StepError(f"{program} get did not finish within {seconds:.3g} s "
                        f"({BUDGET_VARIABLE} sets the budget)", **where) from None
    stdout, stderr = (out.decode(errors="replace").strip(),
                      err.decode(errors="replace").strip())
    if process.returncode != 0:
        if _NOT_FOUND in stdout.lower():
            return None
        said = (stderr or stdout).splitlines()[:1]
        detail = f": {redact(said[0])[:200]}" if said else ""
        raise StepError(f"{program} get failed (exit status {process.returncode}{detail})",
                        **where)
    try:
        answer = json.loads(stdout)
    except (ValueError, RecursionError):
        raise StepError(f"{program} get printed something that is not JSON", **where) from None
    if not isinstance(answer, dict):
        raise StepError(f"{program} get printed a JSON {_kind(answer)}, not an object "
                        "with Username and Secret", **where)
    username, secret = answer.get("Username") or "", answer.get("Secret") or ""
    if not isinstance(username, str) or not isinstance(secret, str):
        raise StepError(f"{program} get printed a Username or Secret that is not a string",
                        **where)
    if username == "<token>":
        return Credentials(identity_token=secret) if secret else None
    return Credentials(username, secret) if username or secret else None


def _kill_group(process: subprocess.Popen) -> None:
    """End the helper and whatever it started (it leads its own session)."""
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except OSError:
        process.kill()
    with contextlib.suppress(subprocess.TimeoutExpired):  # a grandchild left the group
        process.communicate(timeout=5)


class _TransportError(Exception):
    """No HTTP answer: ``reason`` says why (``timed_out``: the budget ran out; ``tls``)."""

    def __init__(self, reason: str, *, timed_out: bool = False, tls: bool = False,
                 peer_speaks_tls: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.timed_out = timed_out
        self.tls = tls
        self.peer_speaks_tls = peer_speaks_tls  # it sent a certificate or a TLS alert


class RegistryClient:
    """Talks to one registry: auth challenges, retries, manifest HEAD."""

    def __init__(self, host: str, *, insecure_registries: tuple[str, ...] = (),
                 verify: bool | str = True, environ: dict[str, str] | None = None,
                 retries: int = RETRIES, backoff: float = BACKOFF,
                 budget: float | None = None) -> None:
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

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        """Digest of repository:tag, None when the registry says it does not exist."""
        with self._redacting():
            return self._manifest_digest(repository, tag)

    def _manifest_digest(self, repository: str, tag: str) -> str | None:
        response, url, deadline = self._pull("HEAD", "manifests", repository, tag)
        if response.status == 404:
            return None
        if response.status == 200:
            digest = response.headers.get("Docker-Content-Digest", "").strip()
            if not _DIGEST.fullmatch(digest):
                problem = (f"a Docker-Content-Digest that is not a digest ({digest[:80]!r})"
                           if digest else "no Docker-Content-Digest header")
                raise StepError(f"manifest HEAD {url} answered HTTP 200 with {problem}",
                                source=self._source)
            return digest
        raise self._failure(response, f"manifest HEAD {url}", deadline)

    def manifest(self, repository: str, reference: str) -> tuple[str, dict]:
        """The image manifest of repository:reference (for an index: its linux/amd64 one)
        and its digest."""
        with self._redacting():
            digest, manifest = self._get_manifest(repository, reference)
            if "manifests" in manifest:  # an index: the platform we build for
                entries = manifest["manifests"]
                chosen = next((m for m in (entries if isinstance(entries, list) else [])
                               if isinstance(m, dict) and isinstance(m.get("platform"), dict)
                               and m["platform"].get("os") == "linux"
                               and m["platform"].get("architecture") == "amd64"), None)
                if chosen is None:
                    raise StepError(f"{repository}:{reference} has no linux/amd64 image",
                                    source=self._source)
                child = chosen.get("digest")
                self._check_digest(child if isinstance(child, str) else "")
                digest, manifest = self._get_manifest(repository, child)
            return digest, manifest

    def blob(self, repository: str, digest: str, limit: int) -> bytes:
        """The blob ``digest`` (at most ``limit`` bytes), checked against its digest."""
        with self._redacting():
            return self._blob(repository, digest, limit)

    def blob_to_file(self, repository: str, digest: str, out: Path, limit: int) -> None:
        """Stream the blob ``digest`` (at most ``limit`` bytes) into ``out``, checked against
        its digest; nothing is left at ``out`` when it fails."""
        with self._redacting():
            algorithm = self._check_digest(digest)
            deadline = Deadline(self.budget + limit / UPLOAD_FLOOR_BYTES_PER_SECOND)
            path = f"/v2/{repository}/blobs/{digest}"
            response = self._request("blob GET", "GET", path, deadline=deadline,
                                     scope=f"repository:{repository}:pull", stream=True)
            url = f"{self.base_url}{path}"
            if response.status != 200:
                raise self._failure(response, f"blob GET {url}", deadline)
            partial = temporary_beside(out)  # two builds may fetch it at once
            hasher, size = hashlib.new(algorithm), 0
            try:
                with response, partial.open("wb") as sink:
                    for chunk in response.stream(1 << 20):
                        size += len(chunk)
                        if size > limit:
                            raise StepError(f"blob {digest} is over {limit} bytes",
                                            source=self._source)
                        hasher.update(chunk)
                        sink.write(chunk)
                self._verify(f"blob GET {url}", f"{algorithm}:{hasher.hexdigest()}", digest)
                partial.replace(out)
            except HTTPError as exc:
                raise StepError(f"blob GET {url} failed ({_reason(exc)})",
                                source=self._source) from None
            finally:
                partial.unlink(missing_ok=True)

    def has_blob(self, repository: str, digest: str) -> bool:
        """Whether ``repository`` already holds the blob ``digest``."""
        with self._redacting():
            deadline = Deadline(self.budget)
            path = f"/v2/{repository}/blobs/{digest}"
            response = self._request("blob HEAD", "HEAD", path, deadline=deadline,
                                     scope=_push_scope(repository))
            if response.status in (200, 404):
                return response.status == 200
            raise self._failure(response, f"blob HEAD {self.base_url}{path}", deadline)

    def push_blob(self, repository: str, digest: str, path: Path | None,
                  mount_from: str | None = None, chunk_size: int = UPLOAD_CHUNK) -> str:
        """Put the blob into ``repository``: a cross-repository mount from ``mount_from`` when
        the registry allows it, else an upload of the file at ``path`` (monolithic, or in
        chunks of ``chunk_size`` when larger). Returns how ("mounted", "uploaded", "uploaded
        in chunks", or "not mounted" when there was no file to upload)."""
        with self._redacting():
            size = path.stat().st_size if path else 0
            deadline = Deadline(self.budget + size / UPLOAD_FLOOR_BYTES_PER_SECOND)
            start = f"/v2/{repository}/blobs/uploads/"
            scope = _push_scope(repository)
            if mount_from and mount_from != repository:
                start += f"?mount={digest}&from={mount_from}"
                scope += f" repository:{mount_from}:pull"
            response = self._request("blob upload POST", "POST", start, scope=scope,
                                     deadline=deadline)
            if response.status == 201:
                return "mounted"
            location = response.headers.get("Location", "")
            if response.status != 202 or not location:
                raise self._failure(response, f"blob upload POST {self.base_url}{start}",
                                    deadline)
            if path is None:
                return "not mounted"
            url = urljoin(f"{self.base_url}/", location)
            final = b""
            if size > chunk_size:  # PATCH chunk by chunk, then PUT the digest
                with path.open("rb") as handle:
                    start = 0
                    while chunk := handle.read(chunk_size):
                        response = self._request(
                            "blob upload PATCH", "PATCH", url, scope=scope, deadline=deadline,
                            data=chunk, headers={
                                "Content-Type": "application/octet-stream",
                                "Content-Range": f"{start}-{start + len(chunk) - 1}"})
                        if response.status != 202 or not response.headers.get("Location"):
                            raise self._failure(response, f"blob upload PATCH "
                                                f"{url.split('?')[0]}", deadline)
                        url = urljoin(f"{self.base_url}/", response.headers["Location"])
                        start += len(chunk)
            else:
                final = path.read_bytes()
            url += ("&" if "?" in url else "?") + f"digest={digest}"
            response = self._request("blob upload PUT", "PUT", url, scope=scope,
                                     deadline=deadline, data=final, headers={
                                         "Content-Type": "application/octet-stream"})
            if response.status not in (201, 204):
                raise self._failure(response, f"blob upload PUT {url.split('?')[0]}", deadline)
            return "uploaded" if size <= chunk_size else "uploaded in chunks"

    def put_manifest(self, repository: str, reference: str, body: bytes,
                     media_type: str) -> str:
        """Store the manifest ``body`` as repository:reference; its digest."""
        with self._redacting():
            deadline = Deadline(self.budget)
            path = f"/v2/{repository}/manifests/{reference}"
            response = self._request("manifest PUT", "PUT", path, deadline=deadline,
                                     scope=_push_scope(repository), data=body,
                                     headers={"Content-Type": media_type})
            what = f"manifest PUT {self.base_url}{path}"
            if response.status not in (200, 201):
                raise self._failure(response, what, deadline)
            digest = _content_digest(body)
            served = response.headers.get("Docker-Content-Digest", "").strip()
            said = f"answered Docker-Content-Digest {_shown(served)}"
            if not served:  # it does not say: what it now serves under the reference
                served = self._manifest_digest(repository, reference) or ""
                said = f"succeeded, but {reference} is then {_shown(served) or 'missing'}"
            if served != digest:
                raise StepError(f"{what} {said}, while the manifest sent has digest {digest}: "
                                "the registry did not store what was pushed",
                                source=self._source, exit_code=1)
            return digest

    def _pull(self, method: str, kind: str, repository: str,
              reference: str) -> tuple[BaseHTTPResponse, str, Deadline]:
        """One pull-scoped request for /v2/<repository>/<kind>/<reference> (kind: manifests
        or blobs) under its own deadline: the answer, the URL and the deadline."""
        deadline = Deadline(self.budget)
        path = f"/v2/{repository}/{kind}/{reference}"
        response = self._request(f"{kind.removesuffix('s')} {method}", method, path,
                                 scope=f"repository:{repository}:pull", deadline=deadline)
        return response, f"{self.base_url}{path}", deadline

    @contextlib.contextmanager
    def _redacting(self) -> Iterator[None]:
        """Errors raised inside, without any credential this client has seen."""
        try:
            yield
        except StepError as exc:
            raise self._redacted(exc) from None

    def _get_manifest(self, repository: str, reference: str) -> tuple[str, dict]:
        """The manifest under a tag, or under a digest (then checked against it)."""
        by_digest = ":" in reference  # a tag has no colon
        algorithm = self._check_digest(reference) if by_digest else "sha256"
        response, url, deadline = self._pull("GET", "manifests", repository, reference)
        if response.status == 404:
            raise StepError(f"{repository}:{reference} not found ({url})", source=self._source)
        if response.status != 200:
            raise self._failure(response, f"manifest GET {url}", deadline)
        digest = _content_digest(response.data, algorithm)
        if by_digest:
            self._verify(f"manifest GET {url}", digest, reference)
        try:
            manifest = json.loads(response.data)
            if not isinstance(manifest, dict):
                raise ValueError("not an object")
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            raise StepError(f"manifest GET {url} answered something that is not a manifest",
                            source=self._source) from None
        return digest, manifest

    def _check_digest(self, digest: str) -> str:
        """``digest``'s algorithm, when it is a digest content can be checked against."""
        algorithm = digest.partition(":")[0]
        if not _DIGEST.fullmatch(digest) or algorithm not in _VERIFIABLE:
            raise StepError(f"{digest[:80]!r} is not a {' or '.join(_VERIFIABLE)} digest",
                            source=self._source)
        return algorithm

    def _verify(self, what: str, served: str, wanted: str) -> None:
        """Refuse content fetched by digest that does not have that digest."""
        if served != wanted:
            raise StepError(f"{what} answered content whose digest is {served}, not the "
                            f"{wanted} asked for: refusing it", source=self._source,
                            exit_code=1)

    def _blob(self, repository: str, digest: str, limit: int) -> bytes:
        algorithm = self._check_digest(digest)
        response, url, deadline = self._pull("GET", "blobs", repository, digest)
        if response.status != 200:
            raise self._failure(response, f"blob GET {url}", deadline)
        if len(response.data) > limit:
            raise StepError(f"blob {digest} is over {limit} bytes", source=self._source)
        self._verify(f"blob GET {url}", _content_digest(response.data, algorithm), digest)
        return response.data

    @property
    def _source(self) -> str:
        return f"registry {self.host}"

    def _redacted(self, exc: StepError) -> StepError:
        def clean(text: str | None) -> str | None:
            return None if text is None else redact(text, self._secrets)

        return StepError(clean(exc.detail) or "", source=clean(exc.source),
                         field=clean(exc.field), exit_code=exc.exit_code)

    def _request(self, what: str, method: str, path: str, *, scope: str,
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
                                source=self._source)
            tls_failure = None
            if response.status == 401 and not own:
                raise StepError(f"{what} {url.split('?')[0]} answered HTTP 401: the registry "
                                "sent it to another host than its own, where no credentials "
                                "are sent", source=self._source, exit_code=1)
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
            return _TransportError(_reason(exc), tls=True, peer_speaks_tls=_peer_speaks_tls(exc))
        except OSError:
            return None

    def _transport_failure(self, exc: _TransportError, what: str, url: str,
                           tls_failure: str | None) -> StepError:
        if exc.tls:
            hint = "give its CA with --registry-ca" + (
                "" if self.allow_plain_http else " or list it in --insecure-registries")
            return StepError(f"{what} {url}: TLS failure ({exc.reason}); {hint}",
                             source=self._source)
        if exc.timed_out:
            problem = (f"did not answer within {self.budget:g} s ({BUDGET_VARIABLE} "
                       "sets the budget)")
        else:
            problem = exc.reason
        subject = f"{what} {url}" if url else what
        after = f" (after HTTPS failed: {tls_failure})" if tls_failure else ""
        return StepError(f"{subject} {problem}{after}", source=self._source)

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
                raise _TransportError(_reason(exc), tls=True,
                                      peer_speaks_tls=_peer_speaks_tls(exc)) from None
            if is_timeout(exc) or deadline.expired:
                raise _TransportError(_reason(exc), timed_out=True) from None
            reason = getattr(exc, "reason", None)
            if isinstance(reason, ResponseError) and "too many redirects" in str(reason):
                raise _TransportError(f"is a redirect loop (more than {MAX_REDIRECTS} "
                                      "redirects)") from None
            if isinstance(exc, (MaxRetryError, ProtocolError)) and not isinstance(
                    reason, ResponseError):
                raise _TransportError(f"unreachable after {attempts} attempt"
                                      f"{'s' if attempts > 1 else ''} ({_reason(exc)})"
                                      ) from None
            raise _TransportError(f"failed ({_reason(exc)})") from None

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
                            f"not an http(s) URL ({realm[:100]!r})", source=self._source)
        service = params.get("service", "")
        if credentials and not self._may_send_credentials(realm):
            raise StepError(f"its WWW-Authenticate challenge names a plain-HTTP token endpoint "
                            f"({realm[:100]}): credentials go to a token endpoint only over "
                            "HTTPS, or over HTTP on a host listed in --insecure-registries",
                            source=self._source, exit_code=1)
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
                                source=self._source) from None
            raise self._transport_failure(exc, what, "", None) from None
        if response.status != 200:
            raise self._failure(response, what, deadline)
        try:
            body = response.json()
        except (ValueError, RecursionError):
            raise StepError(f"{what} answered HTTP 200 with a body that is not JSON",
                            source=self._source) from None
        if not isinstance(body, dict):
            raise StepError(f"{what} answered a JSON {_kind(body)}, not an object with a "
                            "token", source=self._source)
        token = body.get("token") or body.get("access_token")
        if isinstance(token, str):
            self._secrets.add(token)
        if not token:
            raise StepError(f"{what} answered without a token ('token' or 'access_token')",
                            source=self._source)
        if not isinstance(token, str) or not _TOKEN.fullmatch(token):
            raise StepError(f"{what} answered a token that is not a string of printable "
                            "characters", source=self._source)
        return token

    def _may_send_credentials(self, realm: str) -> bool:
        """Whether the docker credentials may go to the token endpoint ``realm``."""
        scheme, host, _ = _origin(realm)
        if scheme == "https":
            return True
        registry_host = _origin(self.base_url)[1]
        return self.allow_plain_http and (host == registry_host or is_insecure(
            urlsplit(realm).netloc, self.insecure_registries))

    def _failure(self, response: BaseHTTPResponse, what: str,
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
        return StepError(text, source=self._source)


def _push_scope(repository: str) -> str:
    return f"repository:{repository}:pull,push"


def _shown(digest: str) -> str:
    """A digest a registry sent, quoted unless it is one."""
    return digest if not digest or _DIGEST.fullmatch(digest) else repr(digest[:80])


def _content_digest(data: bytes, algorithm: str = "sha256") -> str:
    return f"{algorithm}:{hashlib.new(algorithm, data).hexdigest()}"


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


def _reason(exc: BaseException) -> str:
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
