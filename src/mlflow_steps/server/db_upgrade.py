"""`db-upgrade`: migrate the store's schema to the installed MLflow, after a verified backup.

sqlite: a file copy whose sha256 must equal the original's (stop the server first).
PostgreSQL: `pg_dump --format=custom`, checked with `pg_restore --list`; the password goes
to pg_dump in PGPASSWORD, not on its command line. Without a backup tool the upgrade is
refused unless the caller passes ``--no-backup``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mlflow_steps.core import mlflow_compat
from mlflow_steps.core.bounded import file_sha256
from mlflow_steps.core.errors import StepError
from mlflow_steps.server import store
from mlflow_steps.server.check import check_store_exists, writable_dir_problem
from mlflow_steps.server.config import BACKEND_STORE_URI, BACKUP_DIR, ServerConfig


@dataclass(frozen=True)
class Migration:
    revision: str
    description: str


@dataclass(frozen=True)
class UpgradePlan:
    """From where to where, through which migrations (oldest first)."""

    current: str | None
    head: str
    migrations: tuple[Migration, ...]


def plan_upgrade(current: str | None, head: str) -> UpgradePlan:
    """The migrations between ``current`` (exclusive) and ``head``."""
    # the server extra loads only when a server command runs
    from alembic.script import ScriptDirectory
    from alembic.util import CommandError  # the server extra loads only when a server command runs
    if current is None or current == head:
        return UpgradePlan(current, head, ())
    script = ScriptDirectory.from_config(mlflow_compat.alembic_config(""))
    try:
        revisions = list(script.iterate_revisions(head, current))
    except CommandError:
        raise StepError(f"the store is at revision {current}, which this MLflow does not know "
                        "(was it upgraded by a newer MLflow?)", source=BACKEND_STORE_URI) from None
    return UpgradePlan(current, head, tuple(
        Migration(r.revision, (r.doc or "").strip().splitlines()[0] if r.doc else "")
        for r in reversed(revisions)))


def backup_sqlite(database: Path, target: Path) -> Path:
    """Copy the database file; the copy must hash like the original."""
    shutil.copy2(database, target)
    if file_sha256(target) != file_sha256(database):
        target.unlink()
        raise StepError(f"backup {target} differs from {database}: is a server still writing? "
                        "Stop it and retry", source="db-upgrade")
    return target


def backup_postgres(config: ServerConfig, target: Path) -> Path:
    """pg_dump in custom format, verified by pg_restore --list."""
    pg_dump = shutil.which("pg_dump")
    if not pg_dump:
        raise StepError("pg_dump not found: install the PostgreSQL client, or pass --no-backup "
                        "if you have a backup of your own", source="db-upgrade")
    url = config.store_url()
    env = {**os.environ, "PGPASSWORD": url.password or "", "PGHOST": url.host or "",
           "PGPORT": str(url.port or 5432), "PGUSER": url.username or "",
           "PGDATABASE": url.database or ""}
    result = subprocess.run([pg_dump, "--format=custom", "--file", str(target)], env=env,
                            capture_output=True, text=True, check=False)
    if result.returncode != 0:
        reason = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                           f"pg_dump failed: {reason}")
    pg_restore = shutil.which("pg_restore")
    if pg_restore and subprocess.run([pg_restore, "--list", str(target)], capture_output=True,
                                     check=False).returncode != 0:
        raise StepError(f"backup {target} is not a readable dump", source="db-upgrade")
    return target


def backup(config: ServerConfig, directory: Path, revision: str) -> Path:
    """A verified backup of the store in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%S")
    database = config.sqlite_path()
    if database:
        return backup_sqlite(database, directory / f"{database.name}.{revision}.{stamp}.bak")
    if config.store_url().get_backend_name() == "postgresql":
        name = config.store_url().database
        return backup_postgres(config, directory / f"{name}.{revision}.{stamp}.dump")
    raise StepError(f"no backup method for {config.store_url().get_backend_name()}: back it up "
                    "yourself and pass --no-backup", source="db-upgrade")


def upgrade(config: ServerConfig, *, backup_dir: Path | None, dry_run: bool,
            log: Callable[[str], None]) -> UpgradePlan:
    """Back up (unless ``backup_dir`` is None), then upgrade; ``dry_run`` only reports."""
    check_store_exists(config)
    if backup_dir is not None and not dry_run:
        problem = writable_dir_problem(backup_dir)
        if problem:
            raise StepError(f"{problem} (or pass --no-backup if you have your own)",
                            source=f"{BACKUP_DIR} / --backup-dir")
    with store.engine(config) as db_engine:
        upgrade_plan = plan_upgrade(store.current_revision(db_engine), store.head_revision())
        target = config.redact(config.store_uri())
        if upgrade_plan.current is None:
            log(f"db-upgrade: {target} has no MLflow schema yet; `serve` creates it")
            return upgrade_plan
        if not upgrade_plan.migrations:
            log(f"db-upgrade: {target} is already at {upgrade_plan.head}")
            return upgrade_plan
        log(f"db-upgrade: {target} from {upgrade_plan.current} to {upgrade_plan.head}, "
            f"{len(upgrade_plan.migrations)} migration(s):")
        for migration in upgrade_plan.migrations:
            log(f"  {migration.revision}  {migration.description}")
        if dry_run:
            log("db-upgrade: dry run, nothing changed")
            return upgrade_plan
        if backup_dir is not None:
            log(f"db-upgrade: backup {backup(config, backup_dir, upgrade_plan.current)}")
        mlflow_compat.upgrade_schema(db_engine)
        reached = store.current_revision(db_engine)
    if reached != upgrade_plan.head:
        raise StepError(f"upgrade stopped at {reached}, expected {upgrade_plan.head}",
                        source="db-upgrade")
    log(f"db-upgrade: upgraded from {upgrade_plan.current} to {reached}")
    return upgrade_plan
