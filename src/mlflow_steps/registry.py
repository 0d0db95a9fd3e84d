"""OCI distribution client: image references, Docker config.json auth, manifest checks."""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from mlflow_steps.errors import StepError
from mlflow_steps.imageref import DOCKER_HUB, is_insecure

MANIFEST_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
RETRIES = 4
TIMEOUT = 15.0
_CHALLENGE_PARAM = re.compile(r'(\w+)="([^"]*)"')


def docker_config_dir(environ: dict[str, str]) -> Path:
    """Where Docker clients read config.json."""
    return Path(environ.get("DOCKER_CONFIG") or Path.home() / ".docker")


def _registry_keys(host: str) -> list[str]:
    keys = [host, f"https://{host}", f"http://{host}", f"https://{host}/v1/", f"{host}/v1/"]
    if host == DOCKER_HUB:
        keys += ["https://index.docker.io/v1/", "index.docker.io"]
    return keys


@dataclass(frozen=True)
class Credentials:
    """Username/password or an identity (refresh) token for one registry."""

    username: str = ""
    password: str = ""
    identity_token: str = ""


def load_credentials(host: str, environ: dict[str, str]) -> Credentials | None:
    """Credentials for ``host`` from config.json: auths, credHelpers or credsStore."""
    path = docker_config_dir(environ) / "config.json"
    if not path.is_file():
        return None
    try:
        config = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise StepError(f"unreadable Docker config ({exc})", source=str(path)) from None
    helper = (config.get("credHelpers") or {}).get(host) or config.get("credsStore")
    for key in _registry_keys(host):
        entry = (config.get("auths") or {}).get(key)
        if entry:
            return _entry_credentials(entry, path, key)
    if helper:
        return _helper_credentials(helper, host, path)
    return None


def _entry_credentials(entry: dict, path: Path, key: str) -> Credentials:
    if entry.get("identitytoken"):
        return Credentials(username=entry.get("username", ""),
                           identity_token=entry["identitytoken"])
    if entry.get("auth"):
        try:
            username, _, password = base64.b64decode(entry["auth"]).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise StepError("'auth' is not base64 of user:password", source=str(path),
                            field=f"auths.{key}.auth") from None
        return Credentials(username, password)
    return Credentials(entry.get("username", ""), entry.get("password", ""))


def _helper_credentials(helper: str, host: str, path: Path) -> Credentials | None:
    try:
        result = subprocess.run([f"docker-credential-{helper}", "get"], input=host, text=True,
                                capture_output=True, timeout=30, check=False)
    except FileNotFoundError:
        raise StepError(f"credential helper docker-credential-{helper} not found",
                        source=str(path), field="credHelpers") from None
    if result.returncode != 0:
        return None
    data = json.loads(result.stdout)
    if data.get("Username") == "<token>":
        return Credentials(identity_token=data.get("Secret", ""))
    return Credentials(data.get("Username", ""), data.get("Secret", ""))


class RegistryClient:
    """Talks to one registry: auth challenges, retries, manifest HEAD."""

    def __init__(self, host: str, *, insecure_registries: tuple[str, ...] = (),
                 verify: bool | str = True, environ: dict[str, str] | None = None,
                 retries: int = RETRIES, backoff: float = 0.5) -> None:
        self.host = host
        self.scheme = "https"
        self.allow_plain_http = is_insecure(host, insecure_registries)
        self.verify = verify
        self.environ = dict(os.environ if environ is None else environ)
        self.retries = retries
        self.backoff = backoff
        self.session = requests.Session()
        self._authorization: str | None = None

    @property
    def base_url(self) -> str:
        api_host = "registry-1.docker.io" if self.host == DOCKER_HUB else self.host
        return f"{self.scheme}://{api_host}"

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        """Digest of repository:tag, None when the registry says it does not exist."""
        url = f"{self.base_url}/v2/{repository}/manifests/{tag}"
        response = self._request("HEAD", url, scope=f"repository:{repository}:pull")
        if response.status_code == 404:
            return None
        if response.status_code == 200:
            digest = response.headers.get("Docker-Content-Digest")
            if not digest:
                raise StepError("manifest answer has no Docker-Content-Digest header",
                                source=f"registry {self.host}", field=f"{repository}:{tag}")
            return digest
        raise self._failure(response, f"{repository}:{tag}")

    def _request(self, method: str, url: str, *, scope: str) -> requests.Response:
        """One logical request: TLS fallback and auth do not count as retries."""
        headers = {"Accept": ", ".join(MANIFEST_TYPES)}
        attempt = 0
        while True:
            if self._authorization:
                headers["Authorization"] = self._authorization
            try:
                response = self.session.request(method, url, headers=headers, timeout=TIMEOUT,
                                                verify=self.verify, allow_redirects=True)
            except requests.exceptions.SSLError as exc:
                if self.allow_plain_http and self.scheme == "https" and _speaks_plain_http(exc):
                    self.scheme = "http"  # like Docker: insecure registries may lack TLS
                    url = url.replace("https://", "http://", 1)
                    continue
                raise StepError(f"TLS failure ({_short(exc)}); give the registry CA or mark "
                                "it insecure", source=f"registry {self.host}") from None
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt == self.retries:
                    raise StepError(f"unreachable after {attempt + 1} attempts ({_short(exc)})",
                                    source=f"registry {self.host}") from None
                time.sleep(self.backoff * 2**attempt)
                attempt += 1
                continue
            if response.status_code == 401 and "Authorization" not in headers:
                self._authorization = self._authorize(response, scope)
                if self._authorization:
                    continue
            if response.status_code >= 500 and attempt < self.retries:
                time.sleep(self.backoff * 2**attempt)
                attempt += 1
                continue
            return response

    def _authorize(self, response: requests.Response, scope: str) -> str | None:
        challenge = response.headers.get("WWW-Authenticate", "")
        scheme, _, params_text = challenge.partition(" ")
        params = dict(_CHALLENGE_PARAM.findall(params_text))
        credentials = load_credentials(self.host, self.environ)
        if scheme.lower() == "basic":
            if not credentials or not credentials.username:
                return None
            token = base64.b64encode(
                f"{credentials.username}:{credentials.password}".encode()).decode()
            return f"Basic {token}"
        if scheme.lower() == "bearer" and params.get("realm"):
            return f"Bearer {self._bearer_token(params, scope, credentials)}"
        return None

    def _bearer_token(self, params: dict[str, str], scope: str,
                      credentials: Credentials | None) -> str:
        realm = params["realm"]
        service = params.get("service", "")
        if credentials and credentials.identity_token:
            response = self.session.post(realm, timeout=TIMEOUT, verify=self.verify, data={
                "grant_type": "refresh_token", "refresh_token": credentials.identity_token,
                "service": service, "scope": scope, "client_id": "mlflow-steps"})
        else:
            auth = (credentials.username, credentials.password) if credentials else None
            response = self.session.get(realm, params={"service": service, "scope": scope},
                                        auth=auth, timeout=TIMEOUT, verify=self.verify)
        if response.status_code != 200:
            raise self._failure(response, "token endpoint")
        body = response.json()
        token = body.get("token") or body.get("access_token")
        if not token:
            raise StepError("token endpoint answered without a token",
                            source=f"registry {self.host}")
        return token

    def _failure(self, response: requests.Response, what: str) -> StepError:
        detail = _registry_message(response)
        hint = {401: "; check the credentials in DOCKER_CONFIG/config.json",
                403: "; the credentials lack pull rights"}.get(response.status_code, "")
        return StepError(f"HTTP {response.status_code} {detail}{hint}",
                         source=f"registry {self.host}", field=what)


def _registry_message(response: requests.Response) -> str:
    try:
        errors = response.json().get("errors") or []
        return "; ".join(f"{e.get('code')}: {e.get('message')}" for e in errors)[:300]
    except ValueError:
        return (response.reason or "").strip()[:300]


def _speaks_plain_http(exc: Exception) -> bool:
    """True when a TLS handshake failed because the server answered in plain HTTP."""
    return any(marker in str(exc) for marker in ("WRONG_VERSION_NUMBER", "record layer failure"))


def _short(exc: Exception) -> str:
    text = str(exc)
    match = re.search(r"\] ([^'\"\)]+)", text)
    return (match.group(1) if match else text.splitlines()[0]).strip()[:200]
