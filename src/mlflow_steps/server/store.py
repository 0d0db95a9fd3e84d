"""The SQL store: short-timeout engines and alembic schema revisions."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from mlflow_steps.core import mlflow_compat
from mlflow_steps.server.config import BACKEND_STORE_URI, ServerConfig

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

CONNECT_TIMEOUT_SECONDS = 5
_CONNECT_ARGS = {"postgresql": {"connect_timeout": CONNECT_TIMEOUT_SECONDS},
                 "mysql": {"connect_timeout": CONNECT_TIMEOUT_SECONDS},
                 "sqlite": {"timeout": CONNECT_TIMEOUT_SECONDS}}


def _reason(exc: Exception) -> str:
    return str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]


@contextmanager
def engine(config: ServerConfig) -> Iterator[Engine]:
    """An unpooled engine on a store it could read; database errors become one redacted line."""
    import sqlalchemy  # the server extra loads only when a server command runs
    from sqlalchemy.pool import NullPool  # the server extra loads only when a server command runs

    url = config.store_url()
    try:
        db_engine = sqlalchemy.create_engine(
            url, poolclass=NullPool, connect_args=_CONNECT_ARGS.get(url.get_backend_name(), {}))
    except ImportError as exc:
        raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                           f"the driver of {url.drivername} needs the Python module "
                           f"'{exc.name}', which is not installed: pip install it, or name an "
                           "installed driver (postgresql+psycopg2://...)") from None
    except sqlalchemy.exc.SQLAlchemyError as exc:  # an unknown dialect or driver
        raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                           f"cannot use {url}: {_reason(exc)}") from None
    try:
        try:
            connection = db_engine.connect()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               f"cannot connect to {url}: {_reason(exc)}") from None
        try:
            with connection:
                sqlalchemy.inspect(connection).get_table_names()
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               f"cannot read {url}: {_reason(exc)}") from None
        try:
            yield db_engine
        except sqlalchemy.exc.SQLAlchemyError as exc:
            raise config.error(BACKEND_STORE_URI, "--backend-store-uri",
                               f"{url}: {_reason(exc)}") from None
    finally:
        db_engine.dispose()


def current_revision(db_engine: Engine) -> str | None:
    """The store's alembic revision, or None when it has no MLflow schema yet."""
    return mlflow_compat.schema_revision(db_engine)


def head_revision() -> str:
    """The schema revision the installed MLflow needs."""
    return mlflow_compat.head_schema_revision()


def table_names(db_engine: Engine) -> list[str]:
    """Tables in the store's default schema."""
    import sqlalchemy  # the server extra loads only when a server command runs

    return sqlalchemy.inspect(db_engine).get_table_names()
