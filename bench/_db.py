"""A scratch database for benchmarks: on ETL_DATABASE_URL's server, or the embedded cluster."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import psycopg
from psycopg import sql

from etl.db import engine, migrate


def _admin() -> str:
    configured = os.environ.get("ETL_DATABASE_URL", "").strip()
    if configured:
        return configured
    data_dir = Path(os.environ.get("ETL_BENCH_DATA_DIR") or tempfile.gettempdir()) / "etl-bench"
    return str(engine.embedded_server(data_dir).get_uri())


def drop_database(name: str) -> None:
    """Drop database ``name`` — with the autovacuum still cleaning up after what was measured in
    it, which would otherwise run during (and be billed to) the next measurement."""
    with psycopg.connect(_admin(), autocommit=True) as conn:
        conn.execute(
            sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
        )


def scratch_database(name: str) -> str:
    """Drop and re-create database ``name`` at the newest schema; return its URL."""
    drop_database(name)
    admin = _admin()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    info = psycopg.conninfo.conninfo_to_dict(admin)
    info["dbname"] = name
    url = _url(info)
    migrate.upgrade(url)
    return url


def _url(info: dict[str, object]) -> str:
    host = str(info.get("host") or "")
    user = str(info.get("user") or "")
    password = info.get("password")
    port = info.get("port")
    auth = f"{user}:{password}@" if password else f"{user}@" if user else ""
    if host.startswith("/"):
        return f"postgresql://{auth}/{info['dbname']}?host={host}" + (
            f"&port={port}" if port else ""
        )
    return f"postgresql://{auth}{host}{':' + str(port) if port else ''}/{info['dbname']}"
