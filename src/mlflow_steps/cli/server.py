"""`mlflow-steps server ...`: every input is an env var, and a flag that wins over it."""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

import click

from mlflow_steps.core.errors import StepError
from mlflow_steps.core.interrupt import on_signals
from mlflow_steps.server import check as checks
from mlflow_steps.server import config as cfg
from mlflow_steps.server.db_upgrade import upgrade
from mlflow_steps.server.gc import collect, collect_every
from mlflow_steps.server.serve import serve

MIN_EVERY = timedelta(seconds=1)
MAX_EVERY = timedelta(days=365)


def _echo(line: str) -> None:
    click.echo(line)
    sys.stdout.flush()


def _maintenance() -> None:
    """One-off admin commands leave no trace: MLflow's telemetry would write an installation
    id under $HOME (/data, the volume, in the image) and call out, unless asked to."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


def _option(flag: str, envvar: str, **kwargs: Any) -> Callable[[Any], Any]:
    return click.option(flag, envvar=envvar, show_envvar=True, **kwargs)


def config_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Store, artifacts, TTL and token inputs, shared by every server command."""
    for decorator in reversed((
        _option("--backend-store-uri", cfg.BACKEND_STORE_URI,
                default=cfg.DEFAULT_BACKEND_STORE_URI, show_default=True,
                help="SQLAlchemy URL of the tracking and model-registry store."),
        _option("--artifacts-destination", cfg.ARTIFACTS_DESTINATION,
                default=cfg.DEFAULT_ARTIFACTS_DESTINATION, show_default=True,
                help="Where proxied artifacts live: a local path, s3://bucket/prefix, ..."),
        _option("--gc-ttl", cfg.GC_TTL, default=cfg.DEFAULT_GC_TTL, show_default=True,
                help="gc purges what was deleted longer ago than this (#d#h#m#s)."),
        _option("--token", cfg.TOKEN, default=None,
                help="Bearer token every request must carry (prefer the env var)."),
        _option("--require-token/--no-require-token", cfg.REQUIRE_TOKEN, default=False,
                help="Refuse to start without a token."),
    )):
        func = decorator(func)
    return func


def serve_options(func: Callable[..., Any]) -> Callable[..., Any]:
    """Where and how `serve` listens, and whether it may serve without a token (`serve`
    and `check`, which judges the same configuration)."""
    for decorator in reversed((
        _option("--host", cfg.HOST, default="0.0.0.0", show_default=True,
                help="Listen address. Without a token, only a loopback address (127.0.0.1, "
                     "::1, localhost) serves unless --no-auth is given."),
        _option("--port", cfg.PORT, default=5000, show_default=True,
                type=click.IntRange(1, 65535), help="Listen port."),
        _option("--workers", cfg.WORKERS, default=4, show_default=True,
                type=click.IntRange(1, 64), help="uvicorn worker processes."),
        _option("--no-auth", cfg.NO_AUTH, is_flag=True, default=False,
                help="Serve an open API without a token on a non-loopback address (only "
                     "behind something else that authenticates)."),
    )):
        func = decorator(func)
    return func


def _check_every(every: str | None) -> timedelta | None:
    if every is None:
        return None
    try:
        interval = cfg.parse_duration(every)
    except ValueError as exc:
        raise StepError(str(exc), source="--every") from None
    if interval < MIN_EVERY:
        raise StepError(f"must be at least {MIN_EVERY.seconds}s", source="--every")
    if interval > MAX_EVERY:
        raise StepError(f"must be at most {MAX_EVERY.days}d (a CronJob suits rarer passes)",
                        source="--every")
    return interval


class _OneLineGroup(click.Group):
    """Every error of a server command is one line: values quoted in it (a host, a duration,
    a path from an env var) have their line breaks escaped, click's own errors included."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except StepError as exc:
            raise StepError(cfg.one_line(exc.detail), source=exc.source and
                            cfg.one_line(exc.source), field=exc.field and cfg.one_line(exc.field),
                            exit_code=exc.exit_code) from None
        except click.ClickException as exc:  # bad option values, unknown commands
            raise StepError(cfg.one_line(exc.format_message()),
                            exit_code=exc.exit_code) from None


@click.group("server", cls=_OneLineGroup, invoke_without_command=True)
@click.pass_context
def server(ctx: click.Context) -> None:
    """Run and maintain an MLflow tracking server (SQL store, proxied artifacts)."""
    if ctx.invoked_subcommand is None:
        raise StepError(f"needs a command: {', '.join(sorted(server.commands))} (see "
                        "`mlflow-steps server --help`)", source="server")


@server.command("check")
@config_options
@serve_options
def check_command(**values: Any) -> None:
    """Verify the configuration `serve` would run with; print each problem on its own line,
    and the Host headers MLflow will accept."""
    _maintenance()
    config = cfg.ServerConfig(**values)
    with config.reported("check"):
        found = checks.problems(config)
        _echo(f"server check: {cfg.allowed_hosts().describe()}")
    for problem in found:
        click.echo(f"mlflow-steps: check: {cfg.one_line(str(problem))}", err=True)
    if found:
        sys.exit(StepError.exit_code)
    database = config.sqlite_path()
    if database and not database.exists():
        _echo(f"server check: note: {config.redact(config.store_uri())} does not exist yet; "
              "`serve` creates it (`gc` and `db-upgrade` refuse it until then)")
    _echo(f"server check: ok ({config.describe()})")


@server.command("serve")
@config_options
@serve_options
def serve_command(**values: Any) -> None:
    """Serve the tracking server, model registry and proxied artifacts (token-gated if set)."""
    config = cfg.ServerConfig(**values)
    with config.reported("serve"):
        serve(config, dict(os.environ))


@server.command("gc")
@config_options
@click.option("--dry-run", is_flag=True, help="List what would be purged; change nothing.")
@click.option("--every", metavar="DURATION",
              help="Keep running: one pass now, then one per DURATION (#d#h#m#s).")
def gc_command(dry_run: bool, every: str | None, **values: Any) -> None:
    """Purge runs and experiments deleted longer ago than the TTL (rows and artifacts)."""
    _maintenance()
    config = cfg.ServerConfig(**values)
    interval = _check_every(every)
    with config.reported("gc"):
        checks.require(config, checks.GC_CHECKS)
        if interval is None:
            collect(config, dry_run=dry_run, log=_echo)
            return
        stop = threading.Event()
        with on_signals(lambda *_: stop.set()):
            collect_every(config, interval, stop, dry_run=dry_run, log=_echo)
    _echo("gc: stopped")


@server.command("db-upgrade")
@config_options
@click.option("--dry-run", is_flag=True, help="Show the pending migrations; change nothing.")
@click.option("--no-backup", is_flag=True, help="Skip the backup (you have your own).")
@_option("--backup-dir", cfg.BACKUP_DIR, default=cfg.DEFAULT_BACKUP_DIR,
         show_default=True, type=click.Path(path_type=Path, file_okay=False),
         help="Where the backup goes.")
def db_upgrade_command(dry_run: bool, no_backup: bool, backup_dir: Path,
                       **values: Any) -> None:
    """Upgrade the store's schema to this MLflow's, after a verified backup."""
    _maintenance()
    config = cfg.ServerConfig(**values)
    with config.reported("db-upgrade"):
        upgrade(config, backup_dir=None if no_backup else backup_dir.absolute(),
                dry_run=dry_run, log=_echo)
