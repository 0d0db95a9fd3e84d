"""Pre-flight checks: every problem with the configuration, one line each."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

from mlflow_steps.errors import StepError
from mlflow_steps.server import store
from mlflow_steps.server.config import (
    ARTIFACTS_DESTINATION,
    BACKEND_STORE_URI,
    REQUIRE_TOKEN,
    TOKEN,
    ServerConfig,
)


def _writable_dir(path: Path) -> str | None:
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
    """A token when one is required, and one that fits in a header."""
    if config.require_token and not config.token:
        raise StepError(f"not set, but {REQUIRE_TOKEN} requires token auth",
                        source=f"{TOKEN} / --token")
    if config.token and not (config.token.isascii() and config.token.isprintable()
                             and " " not in config.token):
        raise StepError("must be printable ASCII without spaces (it travels in an HTTP "
                        "header)", source=f"{TOKEN} / --token")


def check_artifacts(config: ServerConfig) -> None:
    """A local artifact destination is (or can be made) a writable directory."""
    path = config.local_artifacts_path()
    problem = _writable_dir(path) if path else None
    if problem:
        raise config.error(ARTIFACTS_DESTINATION, "--artifacts-destination", problem)


def check_store(config: ServerConfig) -> None:
    """Reachable, and at the schema the installed MLflow needs (or empty: created on start)."""
    database = config.sqlite_path()
    if database and not database.exists():
        problem = _writable_dir(database.parent)
        if problem:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri", problem)
        return
    with store.engine(config) as db_engine:
        current = store.current_revision(db_engine)
        if current is None and store.table_names(db_engine):
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               "the database has tables but no MLflow schema revision")
        head = store.head_revision()
        if current is not None and current != head:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               f"schema at revision {current}, MLflow needs {head}: run "
                               "`mlflow-steps server db-upgrade` (it backs up first)")


ALL_CHECKS: tuple[Callable[[ServerConfig], None], ...] = (
    check_ttl, check_token, check_artifacts, check_store)


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
