"""Server configuration: the values the CLI read (env vars, flags win), parsed on demand.

Parsing raises :class:`StepError` naming the env var and flag, with any password and the
token redacted (by :mod:`mlflow_steps.core.redaction`), so ``check`` can report every bad value
and the commands the first one.
"""

from __future__ import annotations

import importlib.util
import ipaddress
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from mlflow_steps.core import mlflow_compat
from mlflow_steps.core.errors import StepError
from mlflow_steps.core.redaction import redact

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

BACKEND_STORE_URI = "MLFLOW_BACKEND_STORE_URI"
ARTIFACTS_DESTINATION = "MLFLOW_ARTIFACTS_DESTINATION"
GC_TTL = "MLFLOW_TRACKING_GC_TTL"
TOKEN = "MLFLOW_TRACKING_TOKEN"
REQUIRE_TOKEN = "MLFLOW_SERVER_REQUIRE_TOKEN"
NO_AUTH = "MLFLOW_SERVER_NO_AUTH"
HOST = "MLFLOW_HOST"
PORT = "MLFLOW_PORT"
WORKERS = "MLFLOW_WORKERS"
BACKUP_DIR = "MLFLOW_SERVER_BACKUP_DIR"
# Read by MLflow's security middleware in the server, not by our options.
ALLOWED_HOSTS = "MLFLOW_SERVER_ALLOWED_HOSTS"
DISABLE_SECURITY_MIDDLEWARE = "MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE"

DEFAULT_BACKEND_STORE_URI = "sqlite:///data/mlflow/standalone/store/mydb.sqlite"
DEFAULT_ARTIFACTS_DESTINATION = "data/mlflow/standalone/artifacts"
DEFAULT_GC_TTL = "30d0h0m0s"
DEFAULT_BACKUP_DIR = "data/mlflow/standalone/backups"
SQL_DIALECTS = ("sqlite", "postgresql", "mysql", "mssql")
LOOPBACK_NAMES = ("localhost",)

# Token policy: a token is a random secret that travels in every request header.
TOKEN_MIN_LENGTH = 24
TOKEN_MAX_LENGTH = 4096
TOKEN_MIN_DISTINCT = 6
# Placeholders people ship in manifests and READMEs (deploy/kubernetes/secret.yaml has
# CHANGE-ME), compared lower-case with everything but letters and digits removed.
TOKEN_PLACEHOLDERS = ("changeme", "replaceme", "placeholder", "yourtoken", "tokenhere",
                      "mytoken", "secrettoken", "example", "xxxxxx")
GENERATE_TOKEN = 'generate one with: python -c "import secrets; print(secrets.token_urlsafe(32))"'

_DURATION = re.compile(r"(?:(?P<days>\d+(?:\.\d+)?)d)?(?:(?P<hours>\d+(?:\.\d+)?)h)?"
                       r"(?:(?P<minutes>\d+(?:\.\d+)?)m)?(?:(?P<seconds>\d+(?:\.\d+)?)s)?",
                       re.ASCII)
_SHOWN = 40  # characters of a bad value quoted back in an error line


def _shown(text: str) -> str:
    return text if len(text) <= _SHOWN else f"{text[:_SHOWN]}... ({len(text)} characters)"


def one_line(text: str) -> str:
    """``text`` with line breaks and other control characters escaped (``\\n``): values
    quoted in an error or log line must not break it in two."""
    if text.isprintable():
        return text
    return "".join(char if char.isprintable() else char.encode("unicode_escape").decode()
                   for char in text)


def parse_duration(text: str) -> timedelta:
    """MLflow's duration ``#d#h#m#s`` (e.g. ``30d0h0m0s``, ``12h``, ``1.5d``); ValueError if not.

    Only ASCII digits, never negative, NaN or infinite; at most what ``timedelta`` holds.
    """
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"'{_shown(text)}' is not a duration like 30d0h0m0s (#d#h#m#s)")
    try:
        return timedelta(**{unit: float(v) for unit, v in match.groupdict().items() if v})
    except OverflowError:
        raise ValueError(f"'{_shown(text)}' is too long a duration (at most "
                         f"{timedelta.max.days}d)") from None


def format_duration(value: timedelta) -> str:
    """``value`` in MLflow's ``#d#h#m#s`` form."""
    seconds = int(value.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{days}d{hours}h{minutes}m{seconds}s"


def _store_password(uri: str) -> str | None:
    """The password in a store URI, as SQLAlchemy reads it (else as a URL would have it)."""
    from sqlalchemy.engine import make_url  # the server extra loads only when a server command runs

    try:
        return make_url(uri).password
    except Exception:  # not a SQLAlchemy URL: the error line quoting it still must not leak
        try:
            return urlparse(uri).password
        except ValueError:
            return None


def token_problem(token: str) -> str | None:
    """Why ``token`` is not a usable secret (never quoting it), or None."""
    if not (token.isascii() and token.isprintable() and " " not in token):
        return "must be printable ASCII without spaces (it travels in an HTTP header)"
    if len(token) > TOKEN_MAX_LENGTH:
        return (f"is {len(token)} characters, over {TOKEN_MAX_LENGTH} (it travels in every "
                "request header)")
    normalized = re.sub(r"[^a-z0-9]", "", token.lower())
    if any(word in normalized for word in TOKEN_PLACEHOLDERS):
        return f"is a placeholder, not a secret: {GENERATE_TOKEN}"
    if len(token) < TOKEN_MIN_LENGTH:
        return (f"is {len(token)} characters, too short to be a secret (at least "
                f"{TOKEN_MIN_LENGTH}): {GENERATE_TOKEN}")
    if len(set(token)) < TOKEN_MIN_DISTINCT:
        return f"has only {len(set(token))} distinct characters, not a random secret: " \
            f"{GENERATE_TOKEN}"
    return None


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host.strip().lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip()).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class AllowedHosts:
    """The Host headers MLflow's security middleware lets through, and why."""

    patterns: tuple[str, ...] | None  # None: every Host
    source: str

    def describe(self) -> str:
        listed = "any" if self.patterns is None else ", ".join(self.patterns)
        return f"allowed Host headers ({self.source}): {listed}"


def allowed_hosts() -> AllowedHosts:
    """What MLflow's middleware will do, from the same environment and with its own code."""
    # MLflow loads only when the server uses it
    from mlflow.environment_variables import MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE


    if MLFLOW_SERVER_DISABLE_SECURITY_MIDDLEWARE.get() == "true":
        return AllowedHosts(None, f"{DISABLE_SECURITY_MIDDLEWARE} is true: no Host check")
    configured = mlflow_compat.allowed_hosts_from_env()
    patterns = tuple(configured or mlflow_compat.default_allowed_hosts())
    source = ALLOWED_HOSTS if configured else f"MLflow's default; set {ALLOWED_HOSTS} to " \
        "add the names clients use"
    return AllowedHosts(None if "*" in patterns else patterns, source)


def _installed_driver(url: URL) -> URL:
    """``postgresql://`` picks psycopg 3 under SQLAlchemy 2.1; we ship psycopg2."""
    if url.drivername == "postgresql" and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return url.set(drivername="postgresql+psycopg2")
    return url


@dataclass(frozen=True)
class ServerConfig:
    """Raw server inputs; the methods parse and validate them."""

    backend_store_uri: str = DEFAULT_BACKEND_STORE_URI
    artifacts_destination: str = DEFAULT_ARTIFACTS_DESTINATION
    gc_ttl: str = DEFAULT_GC_TTL
    token: str | None = None
    require_token: bool = False
    no_auth: bool = False
    host: str = "0.0.0.0"
    port: int = 5000
    workers: int = 4

    def secrets(self) -> list[str]:
        """The secret values in this configuration: the store password and the token."""
        return [secret for secret in (_store_password(self.backend_store_uri), self.token)
                if secret]

    def redact(self, text: str) -> str:
        """``text`` without the store password or the token (:func:`redaction.redact`)."""
        return redact(text, self.secrets())

    def error(self, env: str, flag: str, message: str) -> StepError:
        """A one-line error naming the input, secrets redacted."""
        return StepError(one_line(self.redact(message)), source=f"{env} / {flag}")

    @contextmanager
    def reported(self, command: str) -> Iterator[None]:
        """Turn MLflow and database errors raised inside into one redacted line."""
        from mlflow.exceptions import MlflowException  # MLflow loads only when the server uses it

        # the server extra loads only when a server command runs
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except (MlflowException, SQLAlchemyError) as exc:
            text = str(getattr(exc, "message", None) or getattr(exc, "orig", None) or exc)
            line = (text.strip().splitlines() or [type(exc).__name__])[0]
            raise StepError(one_line(self.redact(line)), source=command) from None

    def store_url(self) -> URL:
        """The store as a SQLAlchemy URL (relative sqlite paths made absolute)."""
        # the server extra loads only when a server command runs
        from sqlalchemy.engine import make_url

        # the server extra loads only when a server command runs
        from sqlalchemy.exc import ArgumentError

        try:
            url = make_url(self.backend_store_uri)
        except (ArgumentError, ValueError):
            raise self.error(BACKEND_STORE_URI, "--backend-store-uri",
                             f"'{self.backend_store_uri}' is not a SQLAlchemy database URL "
                             "(dialect[+driver]://user:password@host:port/database)") from None
        if url.get_backend_name() not in SQL_DIALECTS:
            raise self.error(BACKEND_STORE_URI, "--backend-store-uri",
                             f"unsupported database '{url.get_backend_name()}': the model "
                             f"registry needs one of {', '.join(SQL_DIALECTS)}")
        if url.get_backend_name() == "sqlite":
            if not url.database or url.database == ":memory:":
                raise self.error(BACKEND_STORE_URI, "--backend-store-uri",
                                 "an in-memory sqlite store would lose everything on restart")
            url = url.set(database=str(Path(url.database).absolute()))
        return _installed_driver(url)

    def store_uri(self) -> str:
        """The normalised store URI (with its password: never log it, use ``redact``)."""
        return self.store_url().render_as_string(hide_password=False)

    def sqlite_path(self) -> Path | None:
        """The database file when the store is sqlite."""
        url = self.store_url()
        return Path(url.database) if url.get_backend_name() == "sqlite" else None

    def artifacts_uri(self) -> str:
        """The artifact destination; local paths are made absolute."""
        path = self.local_artifacts_path()
        return str(path) if path else self.artifacts_destination

    def local_artifacts_path(self) -> Path | None:
        """The artifact destination when it is a local directory."""
        parsed = urlparse(self.artifacts_destination)
        if parsed.scheme == "file":
            return Path(unquote(parsed.path)).absolute()
        if not parsed.scheme:
            return Path(self.artifacts_destination).absolute()
        return None

    def listens_on_loopback(self) -> bool:
        """Whether ``serve`` would accept connections from this machine only."""
        return is_loopback(self.host)

    def ttl(self) -> timedelta:
        """The gc TTL."""
        try:
            return parse_duration(self.gc_ttl)
        except ValueError as exc:
            raise self.error(GC_TTL, "--gc-ttl", str(exc)) from None

    def describe(self) -> str:
        """One safe line for logs."""
        auth = "token" if self.token else "none (--no-auth)" if self.no_auth else "none"
        return (f"store={self.redact(self.store_uri())} "
                f"artifacts={self.artifacts_uri()} auth={auth}")
