"""Server configuration: the values the CLI read (env vars, flags win), parsed on demand.

Parsing raises :class:`StepError` naming the env var and flag, with any password and the
token redacted, so ``check`` can report every bad value and the commands the first one.
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING
from urllib.parse import unquote, urlparse

from mlflow_steps.errors import StepError

if TYPE_CHECKING:
    from sqlalchemy.engine import URL

BACKEND_STORE_URI = "MLFLOW_BACKEND_STORE_URI"
ARTIFACTS_DESTINATION = "MLFLOW_ARTIFACTS_DESTINATION"
GC_TTL = "MLFLOW_TRACKING_GC_TTL"
TOKEN = "MLFLOW_TRACKING_TOKEN"
REQUIRE_TOKEN = "MLFLOW_SERVER_REQUIRE_TOKEN"

DEFAULT_BACKEND_STORE_URI = "sqlite:///data/mlflow/standalone/store/mydb.sqlite"
DEFAULT_ARTIFACTS_DESTINATION = "data/mlflow/standalone/artifacts"
DEFAULT_GC_TTL = "30d0h0m0s"
DEFAULT_BACKUP_DIR = "data/mlflow/standalone/backups"
SQL_DIALECTS = ("sqlite", "postgresql", "mysql", "mssql")

_DURATION = re.compile(r"(?:(?P<days>\d+(?:\.\d+)?)d)?(?:(?P<hours>\d+(?:\.\d+)?)h)?"
                       r"(?:(?P<minutes>\d+(?:\.\d+)?)m)?(?:(?P<seconds>\d+(?:\.\d+)?)s)?")
_USERINFO_PASSWORD = re.compile(r"(://[^/:@]*):[^/]*@")


def parse_duration(text: str) -> timedelta:
    """MLflow's duration ``#d#h#m#s`` (e.g. ``30d0h0m0s``, ``12h``, ``1.5d``); ValueError if not."""
    match = _DURATION.fullmatch(text.strip())
    if not text.strip() or match is None:
        raise ValueError(f"'{text}' is not a duration like 30d0h0m0s (#d#h#m#s)")
    return timedelta(**{unit: float(v) for unit, v in match.groupdict().items() if v})


def format_duration(value: timedelta) -> str:
    """``value`` in MLflow's ``#d#h#m#s`` form."""
    seconds = int(value.total_seconds())
    days, seconds = divmod(seconds, 86400)
    hours, seconds = divmod(seconds, 3600)
    minutes, seconds = divmod(seconds, 60)
    return f"{days}d{hours}h{minutes}m{seconds}s"


def redact_uri(uri: str) -> str:
    """``uri`` with the password of its user-info replaced by ``***``."""
    return _USERINFO_PASSWORD.sub(r"\1:***@", uri)


def _uri_password(uri: str) -> str | None:
    try:
        return urlparse(uri).password
    except ValueError:
        return None


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
    host: str = "0.0.0.0"
    port: int = 5000
    workers: int = 4

    def redact(self, text: str) -> str:
        """``text`` without the store password or the token."""
        text = text.replace(self.backend_store_uri, redact_uri(self.backend_store_uri))
        for secret in (_uri_password(self.backend_store_uri), self.token):
            if secret:
                text = text.replace(secret, "***").replace(unquote(secret), "***")
        return text

    def error(self, env: str, flag: str, message: str) -> StepError:
        """A one-line error naming the input, secrets redacted."""
        return StepError(self.redact(message), source=f"{env} / {flag}")

    @contextmanager
    def reported(self, command: str) -> Iterator[None]:
        """Turn MLflow and database errors raised inside into one redacted line."""
        from mlflow.exceptions import MlflowException
        from sqlalchemy.exc import SQLAlchemyError

        try:
            yield
        except (MlflowException, SQLAlchemyError) as exc:
            text = str(getattr(exc, "message", None) or getattr(exc, "orig", None) or exc)
            line = (text.strip().splitlines() or [type(exc).__name__])[0]
            raise StepError(self.redact(line), source=command) from None

    def store_url(self) -> URL:
        """The store as a SQLAlchemy URL (relative sqlite paths made absolute)."""
        from sqlalchemy.engine import make_url
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

    def ttl(self) -> timedelta:
        """The gc TTL."""
        try:
            return parse_duration(self.gc_ttl)
        except ValueError as exc:
            raise self.error(GC_TTL, "--gc-ttl", str(exc)) from None

    def describe(self) -> str:
        """One safe line for logs."""
        auth = "token" if self.token else "none"
        return (f"store={self.redact(self.store_uri())} "
                f"artifacts={self.artifacts_uri()} auth={auth}")
