"""Pre-flight checks: every problem with the configuration, one line each.

``serve`` and ``check`` run :data:`ALL_CHECKS` (a store that does not exist yet is fine:
``serve`` creates it); the maintenance commands run :data:`MAINTENANCE_CHECKS`, which
refuse a store or artifact directory that does not exist instead of creating one.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from mlflow_steps.core.errors import StepError
from mlflow_steps.server import store
from mlflow_steps.server.config import (
    ALLOWED_HOSTS,
    ARTIFACTS_DESTINATION,
    BACKEND_STORE_URI,
    GENERATE_TOKEN,
    HOST,
    NO_AUTH,
    PORT,
    REQUIRE_TOKEN,
    TOKEN,
    ServerConfig,
    allowed_hosts,
    token_problem,
)

_HOSTNAME = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)(?:\.(?!-)[A-Za-z0-9-]{1,63}(?<!-))*\.?",
                       re.ASCII)
# Artifact repositories a destination may name (MLflow's registry knows a few more that
# only make sense for reading: runs:/, models:/, and mlflow-artifacts:/, the server itself).
_ARTIFACT_SCHEMES_WITH_LOCATION = ("s3", "gs", "wasbs", "abfss", "b2", "r2", "ftp", "sftp",
                                   "http", "https")
_ARTIFACT_SCHEMES = (*_ARTIFACT_SCHEMES_WITH_LOCATION, "hdfs", "viewfs", "dbfs")
_NOT_A_DESTINATION = ("runs", "models", "mlflow-artifacts")


def writable_dir_problem(path: Path) -> str | None:
    """Why ``path`` cannot be (created as) a writable directory, or None."""
    existing = path
    while not existing.exists():
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is not a directory"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is not writable"
    return None


def check_ttl(config: ServerConfig) -> None:
    """The gc TTL parses."""
    config.ttl()


def check_token(config: ServerConfig) -> None:
    """A real secret as token; without one, an explicit --no-auth or a loopback address."""
    source = f"{TOKEN} / --token"
    if config.no_auth and (config.token or config.require_token):
        raise StepError(f"--no-auth ({NO_AUTH}) contradicts "
                        + ("the token that is set" if config.token else REQUIRE_TOKEN)
                        + ": drop one of them", source=source)
    if not config.token:
        if config.require_token:
            raise StepError(f"not set, but {REQUIRE_TOKEN} requires token auth", source=source)
        if not config.no_auth and not config.listens_on_loopback():
            raise StepError(f"not set, and the server would listen on {config.host}, serving "
                            f"an open API to the network: set a token ({GENERATE_TOKEN}), or "
                            f"pass --no-auth ({NO_AUTH}) if something in front authenticates, "
                            "or listen on 127.0.0.1", source=source)
        return
    problem = token_problem(config.token)
    if problem:
        raise StepError(problem, source=source)


def check_listen_address(config: ServerConfig) -> None:
    """The host to listen on is an IP address or a host name that resolves."""
    source = f"{HOST} / --host"
    if not _HOSTNAME.fullmatch(config.host):
        try:
            socket.inet_pton(socket.AF_INET6, config.host)
        except (OSError, ValueError):
            raise StepError(f"'{config.host[:80]}' is not an IP address or host name "
                            "(0.0.0.0: every interface; 127.0.0.1: this machine only)",
                            source=source) from None
    try:
        socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)
    except (OSError, UnicodeError, ValueError) as exc:
        raise StepError(f"cannot resolve {config.host}: {getattr(exc, 'strerror', None) or exc}",
                        source=source) from None


def check_port_free(config: ServerConfig) -> None:
    """Nothing else listens on host:port (serve only: `check` may run beside the server)."""
    try:
        family = socket.getaddrinfo(config.host, config.port, type=socket.SOCK_STREAM)[0][0]
    except (OSError, UnicodeError, ValueError):
        return  # check_listen_address reports it
    with socket.socket(family, socket.SOCK_STREAM) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind((config.host, config.port))
        except OSError as exc:
            raise StepError(f"cannot listen on {config.host}:{config.port}: "
                            f"{exc.strerror or exc}", source=f"{PORT} / --port") from None


def check_allowed_hosts(config: ServerConfig) -> None:
    """MLFLOW_SERVER_ALLOWED_HOSTS entries can match a Host header (host[:port] patterns)."""
    patterns = allowed_hosts().patterns
    if patterns is None or not os.environ.get(ALLOWED_HOSTS):
        return
    for pattern in patterns:
        if "/" in pattern or any(char.isspace() for char in pattern):
            raise StepError(f"entry '{pattern[:80]}' can never match a Host header: entries "
                            "are host[:port] patterns like mlflow.example.com, "
                            "mlflow-tracking-server:*", source=ALLOWED_HOSTS)
    if not any(patterns):
        raise StepError("lists no host: every request but /health would get 403 "
                        "'Invalid Host header'", source=ALLOWED_HOSTS)


def check_artifacts(config: ServerConfig) -> None:
    """A destination MLflow can write to; a local one is (or can be made) a writable dir."""
    flag = "--artifacts-destination"
    path = config.local_artifacts_path()
    if path is None:
        parsed = urlparse(config.artifacts_destination)
        if parsed.scheme in _NOT_A_DESTINATION:
            raise config.error(ARTIFACTS_DESTINATION, flag,
                               f"{parsed.scheme}: URIs are read-only references, not a place "
                               "to store artifacts (e.g. s3://bucket/prefix or a directory)")
        if parsed.scheme in _ARTIFACT_SCHEMES_WITH_LOCATION and not parsed.netloc:
            raise config.error(ARTIFACTS_DESTINATION, flag,
                               f"'{config.artifacts_destination[:80]}' names no bucket or host "
                               f"({parsed.scheme}://bucket/prefix)")
        if parsed.scheme not in _ARTIFACT_SCHEMES:
            raise config.error(ARTIFACTS_DESTINATION, flag,
                               f"unknown artifact store scheme '{parsed.scheme[:40]}': a "
                               "directory, or one of "
                               + ", ".join(f"{s}://" for s in _ARTIFACT_SCHEMES))
        return
    parsed = urlparse(config.artifacts_destination)
    if not config.artifacts_destination.strip() or (parsed.scheme == "file" and not parsed.path):
        raise config.error(ARTIFACTS_DESTINATION, flag, "names no directory")
    problem = writable_dir_problem(path)
    if problem:
        raise config.error(ARTIFACTS_DESTINATION, flag, problem)


def check_artifacts_exist(config: ServerConfig) -> None:
    """A local artifact destination exists: gc must not purge rows and orphan the files."""
    check_artifacts(config)
    path = config.local_artifacts_path()
    if path is not None and not path.is_dir():
        raise config.error(ARTIFACTS_DESTINATION, "--artifacts-destination",
                           f"{path} does not exist (a mistyped path? gc would delete runs but "
                           "not their files; `mlflow-steps server serve` creates it)")


def check_store(config: ServerConfig) -> None:
    """Reachable, and at the schema the installed MLflow needs (or empty: created on start)."""
    database = config.sqlite_path()
    if database and not database.exists():
        problem = writable_dir_problem(database.parent)
        if problem:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri", problem)
        return
    check_store_exists(config)
    _check_schema(config, required=False)


def _check_schema(config: ServerConfig, *, required: bool) -> None:
    """The store's schema is this MLflow's; ``required``: an empty store is refused too."""
    with store.engine(config) as db_engine:
        current = store.current_revision(db_engine)
        if current is None and required:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               f"{config.redact(config.store_uri())} has no MLflow schema: "
                               "not a tracking store (a mistyped name? only `mlflow-steps "
                               "server serve` creates a store)")
        if current is None and store.table_names(db_engine):
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               "the database has tables but no MLflow schema revision")
        head = store.head_revision()
        if current is not None and current != head:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               f"schema at revision {current}, MLflow needs {head}: run "
                               "`mlflow-steps server db-upgrade` (it backs up first)")


def check_store_exists(config: ServerConfig) -> None:
    """The store is there (sqlite: a file): maintenance commands never create one."""
    database = config.sqlite_path()
    if database is None or database.is_file():
        return
    where = config.redact(config.store_uri())
    problem = f"{where} is not a database file" if database.exists() else \
        f"{where} does not exist (a mistyped path? only `mlflow-steps server serve` creates " \
        "a store)"
    raise config.error(BACKEND_STORE_URI, "--backend-store-uri", problem)


def check_existing_store(config: ServerConfig) -> None:
    """An existing store with this MLflow's schema (what gc needs; it creates nothing)."""
    check_store_exists(config)
    _check_schema(config, required=True)


ALL_CHECKS: tuple[Callable[[ServerConfig], None], ...] = (
    check_ttl, check_listen_address, check_token, check_allowed_hosts, check_artifacts,
    check_store)
SERVE_CHECKS = (*ALL_CHECKS, check_port_free)
GC_CHECKS: tuple[Callable[[ServerConfig], None], ...] = (
    check_ttl, check_existing_store, check_artifacts_exist)


def problems(config: ServerConfig,
             checks: tuple[Callable[[ServerConfig], None], ...] = ALL_CHECKS) -> list[StepError]:
    """Run ``checks``; the errors they raised, in order."""
    found = []
    for check in checks:
        try:
            check(config)
        except StepError as exc:
            found.append(exc)
    return found


def require(config: ServerConfig,
            checks: tuple[Callable[[ServerConfig], None], ...] = ALL_CHECKS) -> None:
    """Raise the first problem (noting how many more ``check`` would list)."""
    found = problems(config, checks)
    if found:
        first = found[0]
        more = f" (and {len(found) - 1} more: see `mlflow-steps server check`)" \
            if len(found) > 1 else ""
        raise StepError(f"{first.detail}{more}", source=first.source, field=first.field)
