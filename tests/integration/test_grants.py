"""The reader role: it can read the order tables and the report views, and nothing else.

Checked by connecting as that role to a real database after `etl migrate` / `etl grant-reader`
(real processes) or a library upgrade applied the grants.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from etl.db import migrate
from etl.db.tables import READABLE, metadata
from tests.helpers import etl_cmd, etl_env

ROOT = Path(__file__).resolve().parents[2]
PASSWORD = "reader-pw-1"
INTERNAL = (
    "sync_queue",
    "sync_runs",
    "top_bans",
    "top_credential_holds",
    "backfills",
    "backfill_ids",
    "tmc_hints",
    "tmc_latency",
    "tmc_topics",
    "tmc_unreadable",
    "top_quota_leases",
    "top_quota_days",
    "alembic_version",
)
VIEWS = (
    "report_daily_sales",
    "report_pay_channel_mix",
    "report_item_sales",
    "report_omni_guides",
    "report_sync_freshness",
    "report_data_quality",
)
_n = itertools.count()


@pytest.fixture
def reader(pg_admin_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh login role with no privileges (roles are per server: dropped after the test)."""
    role = f"etl_reader_{os.getpid()}_{next(_n)}"
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(PASSWORD)
            )
        )
    yield role
    # The test's database outlives this fixture: drop the role's privileges there first.
    fixture = "db_url" if "db_url" in request.fixturenames else "empty_db_url"
    with psycopg.connect(request.getfixturevalue(fixture), autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
    with psycopg.connect(pg_admin_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def as_role(url: str, role: str) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(
        psycopg.conninfo.make_conninfo(url, user=role, password=PASSWORD), autocommit=True
    )


def refused(conn: psycopg.Connection[tuple[object, ...]], statement: str) -> bool:
    try:
        conn.execute(statement)
    except psycopg.errors.InsufficientPrivilege:
        return True
    return False


def assert_reader_only(url: str, role: str) -> None:
    with as_role(url, role) as conn:
        for table in READABLE:
            conn.execute(f"SELECT count(*) FROM {table.name}").fetchone()
        for view in VIEWS:
            conn.execute(f"SELECT * FROM {view} LIMIT 1").fetchall()
        for table in READABLE:
            assert refused(conn, f"INSERT INTO {table.name} DEFAULT VALUES"), table.name
            column = next(iter(table.columns)).name
            assert refused(conn, f"UPDATE {table.name} SET {column} = {column}"), table.name
            assert refused(conn, f"DELETE FROM {table.name}"), table.name
            assert refused(conn, f"TRUNCATE {table.name}"), table.name
        for table in INTERNAL:
            assert refused(conn, f"SELECT 1 FROM {table} LIMIT 1"), table
        assert refused(conn, "INSERT INTO sync_queue DEFAULT VALUES")
        assert refused(conn, "DROP VIEW report_daily_sales")
        assert refused(conn, "CREATE TABLE reader_scratch (x int)")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        etl_cmd(*args), env=env, capture_output=True, text=True, timeout=120, check=False
    )


def test_every_table_is_either_readable_or_internal() -> None:
    assert set(metadata.tables) == {t.name for t in READABLE} | set(INTERNAL) - {"alembic_version"}


def test_without_grants_the_role_reads_nothing(db_url: str, reader: str) -> None:
    with as_role(db_url, reader) as conn:
        assert refused(conn, "SELECT 1 FROM wdk_orders")
        assert refused(conn, "SELECT 1 FROM report_daily_sales")


def test_etl_migrate_with_reader_role_grants_read_only_access(db_url: str, reader: str) -> None:
    env = etl_env(db_url, "http://127.0.0.1:9/router/rest", reader_role=reader)
    result = run(env, "migrate")
    assert result.returncode == 0, result.stderr
    assert f"granted to role {reader}" in result.stdout
    assert_reader_only(db_url, reader)


def test_a_new_view_is_covered_when_migrate_runs_again(db_url: str, reader: str) -> None:
    env = etl_env(db_url, "http://127.0.0.1:9/router/rest", reader_role=reader)
    assert run(env, "migrate").returncode == 0
    with psycopg.connect(db_url, autocommit=True) as conn:  # what a later migration would add
        conn.execute("CREATE VIEW report_later AS SELECT count(*) AS n FROM wdk_orders")
    with as_role(db_url, reader) as conn:
        assert refused(conn, "SELECT * FROM report_later")
    assert run(env, "migrate").returncode == 0
    with as_role(db_url, reader) as conn:
        assert conn.execute("SELECT n FROM report_later").fetchone() == (0,)


def test_an_upgrade_from_empty_grants_the_views_it_creates(empty_db_url: str, reader: str) -> None:
    migrate.upgrade(empty_db_url, reader_role=reader)
    assert_reader_only(empty_db_url, reader)


def test_grant_reader_command_revokes_what_was_granted_before(db_url: str, reader: str) -> None:
    with psycopg.connect(db_url, autocommit=True) as conn:  # someone was generous by hand
        conn.execute(
            sql.SQL("GRANT ALL ON ALL TABLES IN SCHEMA public TO {}").format(sql.Identifier(reader))
        )
    result = run(etl_env(db_url, "http://127.0.0.1:9/router/rest"), "grant-reader", reader)
    assert result.returncode == 0, result.stderr
    assert "no access to" in result.stdout
    assert "sync_queue" in result.stdout.split("no access to")[1]
    assert_reader_only(db_url, reader)


def test_a_missing_role_stops_migrate_before_it_migrates(empty_db_url: str) -> None:
    env = etl_env(empty_db_url, "http://127.0.0.1:9/router/rest", reader_role="no_such_role")
    result = run(env, "migrate")
    assert result.returncode == 2
    assert "reader role 'no_such_role' does not exist" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert migrate.current_revision(empty_db_url) is None


def test_alembic_upgrade_from_a_checkout_applies_the_reader_role(
    empty_db_url: str, reader: str
) -> None:
    # The top-level alembic.ini and migrations/ stay the source of truth for a checkout.
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_CONFIG="", ETL_DATABASE_URL=empty_db_url, ETL_READER_ROLE=reader)
    result = subprocess.run(
        [sys.executable, "-m", "alembic", "upgrade", "head"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert migrate.current_revision(empty_db_url) == migrate.head_revision(empty_db_url)
    assert_reader_only(empty_db_url, reader)
