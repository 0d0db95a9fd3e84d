"""`gc`: purge runs, logged models and experiments deleted longer ago than the TTL.

Runs and MLflow 3 logged models deleted at or before ``now - ttl`` go, rows and artifacts,
with everything in an experiment deleted at or before then (its name becomes free again).
Proxied artifacts (``mlflow-artifacts:/...``) are resolved against the artifact destination.
The store hooks are the ones `mlflow gc` uses.

Locations come from the store, and clients choose experiments' artifact locations: gc only
deletes a proxied location strictly inside the destination (no ``..``, never the root), and
an experiment's root only when it is the one the server gave it (``mlflow-artifacts:/<id>``),
so an experiment pointed at another's directory (or at ``mlflow-artifacts:/``) does not take
that directory along. The rows go either way; the line says which artifacts were kept.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlparse

from mlflow_steps.core import mlflow_compat
from mlflow_steps.server.config import ARTIFACTS_DESTINATION, ServerConfig, one_line

if TYPE_CHECKING:
    from mlflow.store.tracking.sqlalchemy_store import SqlAlchemyStore

PROXIED_SCHEME = "mlflow-artifacts"


@dataclass(frozen=True)
class Purge:
    """One thing to purge: a run, a logged model or an experiment, and its artifacts."""

    kind: str
    id: str
    name: str
    artifact_uri: str

    def describe(self) -> str:
        return one_line(f"{self.kind} {self.id} ({self.name}) artifacts {self.artifact_uri}")


def resolve_artifact_uri(uri: str, destination: str) -> str | None:
    """Where ``uri``'s files are: proxied URIs map into ``destination``; None for none."""
    parsed = urlparse(uri)
    if parsed.scheme == PROXIED_SCHEME:
        return f"{destination.rstrip('/')}/{parsed.path.lstrip('/')}"
    return uri or None


def deletable_location(purge: Purge, destination: str) -> tuple[str | None, str | None]:
    """(where gc deletes ``purge``'s artifacts or None, why it keeps them or None)."""
    parsed = urlparse(purge.artifact_uri)
    if parsed.scheme != PROXIED_SCHEME:
        # experiment roots elsewhere are not the server's; runs' and models' are their own
        return (None, None) if purge.kind == "experiment" else (purge.artifact_uri or None, None)
    segments = [part for part in unquote(parsed.path).split("/") if part]
    if not segments:
        return None, "the location is the whole artifact destination"
    if any(part in (".", "..") for part in segments) or ".." in parsed.path:
        return None, "the location leaves the artifact destination"
    if purge.kind == "experiment" and segments != [purge.id]:
        return None, f"not the location the server gave it ({PROXIED_SCHEME}:/{purge.id})"
    return resolve_artifact_uri(purge.artifact_uri, destination), None


def _line(purge: Purge, kept: str | None) -> str:
    return purge.describe() + (one_line(f" (artifacts kept: {kept})") if kept else "")


def open_store(config: ServerConfig) -> SqlAlchemyStore:
    """MLflow's SQL tracking store on the configured database."""
    return mlflow_compat.sql_tracking_store(config.store_uri(), "mlflow-artifacts:/")


def plan(tracking_store: SqlAlchemyStore, ttl: timedelta, now_ms: int) -> list[Purge]:
    """Runs, logged models, then experiments, deleted at or before ``now_ms - ttl``."""
    from mlflow.entities import ViewType  # MLflow loads only when the server uses it

    ttl_ms = min(int(ttl.total_seconds() * 1000), now_ms)  # nothing was deleted before 1970
    experiments = _all_pages(lambda token: tracking_store.search_experiments(
        view_type=ViewType.DELETED_ONLY, filter_string=f"last_update_time <= {now_ms - ttl_ms}",
        page_token=token))
    run_ids = set(mlflow_compat.deleted_run_ids(tracking_store, ttl_ms))
    if experiments:  # every run of a purged experiment goes with it, deleted or not
        run_ids.update(run.info.run_id for run in _all_pages(lambda token: tracking_store
                       .search_runs([e.experiment_id for e in experiments], "",
                                    ViewType.ALL, page_token=token)))
    runs = sorted((tracking_store.get_run(run_id).info for run_id in run_ids),
                  key=lambda info: (info.experiment_id, info.run_id))
    return ([Purge("run", r.run_id, r.run_name or "", r.artifact_uri) for r in runs]
            + _logged_models(tracking_store, ttl_ms, {e.experiment_id for e in experiments})
            + [Purge("experiment", e.experiment_id, e.name, e.artifact_location)
               for e in experiments])


def _logged_models(tracking_store: SqlAlchemyStore, ttl_ms: int,
                   purged_experiments: set[str]) -> list[Purge]:
    """Deleted logged models (MLflow 3) outside purged experiments, which take theirs along."""
    models = (mlflow_compat.deleted_logged_model(tracking_store, model_id)
              for model_id in mlflow_compat.deleted_logged_model_ids(tracking_store, ttl_ms))
    return sorted((Purge("model", m.model_id, m.name, m.artifact_location) for m in models
                   if m.experiment_id not in purged_experiments), key=lambda p: p.id)


def _all_pages(fetch: Callable[[str | None], Any]) -> list[Any]:
    items: list[Any] = []
    token = None
    while True:
        page = fetch(token)
        items.extend(page)
        token = page.token
        if not token:
            return items


def _delete_artifacts(purge: Purge, config: ServerConfig) -> None:
    """Delete ``purge``'s artifacts; experiment roots only when the server manages them.

    Whatever the artifact store answers (missing credentials, no such bucket, permission
    denied) stops gc with one redacted line, before the rows go.
    """
    location, _ = deletable_location(purge, config.artifacts_uri())
    if not location:
        return
    try:
        mlflow_compat.artifact_repository(location).delete_artifacts()
    except Exception as exc:  # any artifact store's client: boto3, GCS, Azure, OS errors
        reason = (str(exc).strip().splitlines() or [""])[0]
        raise config.error(ARTIFACTS_DESTINATION, "--artifacts-destination",
                           f"cannot delete the artifacts of {purge.kind} {purge.id} at "
                           f"{location}: {type(exc).__name__}: {reason}") from None


def execute(tracking_store: SqlAlchemyStore, purges: list[Purge], config: ServerConfig,
            log: Callable[[str], None]) -> None:
    """Delete artifacts, then rows, run by run; experiments last."""
    for purge in purges:
        _delete_artifacts(purge, config)
        if purge.kind == "run":
            mlflow_compat.hard_delete_run(tracking_store, purge.id)
        elif purge.kind == "model":
            mlflow_compat.hard_delete_logged_model(tracking_store, purge.id)
        else:
            mlflow_compat.hard_delete_experiment(tracking_store, purge.id)
        log(f"purged {_line(purge, deletable_location(purge, config.artifacts_uri())[1])}")


def collect(config: ServerConfig, *, dry_run: bool, log: Callable[[str], None]) -> int:
    """One gc pass; the number of items purged (or that would be)."""
    tracking_store = open_store(config)
    ttl = config.ttl()
    purges = plan(tracking_store, ttl, int(time.time() * 1000))
    if dry_run:
        for purge in purges:
            log(f"would purge {_line(purge, deletable_location(purge, config.artifacts_uri())[1])}")
    else:
        execute(tracking_store, purges, config, log)
    verb = "would purge" if dry_run else "purged"
    log(f"gc: {verb} {len(purges)} item(s) deleted more than {config.gc_ttl} ago")
    return len(purges)


def collect_every(config: ServerConfig, interval: timedelta, stop: threading.Event, *,
                  dry_run: bool, log: Callable[[str], None]) -> None:
    """A pass now, then one per ``interval``, until ``stop`` is set."""
    while True:
        collect(config, dry_run=dry_run, log=log)
        if stop.wait(interval.total_seconds()):
            return
