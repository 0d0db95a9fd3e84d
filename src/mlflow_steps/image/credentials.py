"""Registry credentials as the docker CLI finds them in config.json: ``credHelpers[host]``,
else ``credsStore``, else the ``auths`` entry. Every bad entry is one StepError naming the
file and the field; what a helper says is shown only redacted."""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact
from mlflow_steps.core.retry import BUDGET_VARIABLE, network_budget
from mlflow_steps.image.reference import DOCKER_HUB

HUB_INDEX = "https://index.docker.io/v1/"  # the docker CLI's key for Docker Hub credentials
_HUB_HOSTS = (DOCKER_HUB, "index.docker.io", "registry-1.docker.io")
_HELPER_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
_NOT_FOUND = "credentials not found"  # docker-credential-helpers' "not found" answer


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
        raise StepError(f"Docker config is a JSON {json_kind(config)}, not an object",
                        source=str(path))
    return config


def json_kind(value: object) -> str:
    """What JSON value ``value`` is, in a word (for messages)."""
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
        raise StepError(f"must map registry hosts to helper names, not a {json_kind(helpers)}",
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
        shown = repr(name) if isinstance(name, str) else f"a {json_kind(name)}"
        raise StepError(f"{shown[:60]} is not a credential helper name (docker-credential-NAME)",
                        source=str(path), field=field)
    return name, field


def _auths_credentials(config: dict, host: str, path: Path) -> Credentials | None:
    auths = config.get("auths")
    if auths is None:
        return None
    if not isinstance(auths, dict):
        raise StepError(f"must map registries to credentials, not a {json_kind(auths)}",
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
                        f"{json_kind(entry)}", source=str(path), field=field)
    for name in ("auth", "username", "password", "identitytoken"):
        if not isinstance(entry.get(name, ""), str):
            raise StepError(f"must be a string, not a {json_kind(entry[name])}", source=str(path),
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
    # imported here, not at the top: a check without a credential helper (the skip) does
    # not load it
    from mlflow_steps.core.interrupt import run

    try:  # the timeout or an interruption ends the helper and whatever it started
        done = run([executable, "get"], input=server.encode(), timeout=max(seconds, 0.01),
                   env=env)
    except subprocess.TimeoutExpired:
        raise StepError(f"{program} get did not finish within {seconds:.3g} s "
                        f"({BUDGET_VARIABLE} sets the budget)", **where) from None
    except OSError as exc:
        raise StepError(f"cannot run {program} ({exc.strerror})", **where) from None
    stdout, stderr = (done.stdout.decode(errors="replace").strip(),
                      done.stderr.decode(errors="replace").strip())
    if done.returncode != 0:
        if _NOT_FOUND in stdout.lower():
            return None
        said = (stderr or stdout).splitlines()[:1]
        detail = f": {redact(said[0])[:200]}" if said else ""
        raise StepError(f"{program} get failed (exit status {done.returncode}{detail})",
                        **where)
    try:
        answer = json.loads(stdout)
    except (ValueError, RecursionError):
        raise StepError(f"{program} get printed something that is not JSON", **where) from None
    if not isinstance(answer, dict):
        raise StepError(f"{program} get printed a JSON {json_kind(answer)}, not an object "
                        "with Username and Secret", **where)
    username, secret = answer.get("Username") or "", answer.get("Secret") or ""
    if not isinstance(username, str) or not isinstance(secret, str):
        raise StepError(f"{program} get printed a Username or Secret that is not a string",
                        **where)
    if username == "<token>":
        return Credentials(identity_token=secret) if secret else None
    return Credentials(username, secret) if username or secret else None

