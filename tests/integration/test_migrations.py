"""The migrations produce exactly etl/db/tables.py, round-trip, and `etl migrate` works bare."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psycopg
import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from etl.db import backfills, migrate, partitions
from etl.db import engine as db_engine
from etl.db.tables import metadata
from tests.conftest import stop_server
from tests.helpers import one

EXPECTED_TABLES = {
    "wdk_orders",
    "wdk_pay_channels",
    "wdk_sub_orders",
    "omni_orders",
    "omni_subpay_orders",
    "omni_pay_serials",
    "sync_queue",
    "sync_runs",
}


def _tables(url: str) -> set[str]:
    with psycopg.connect(url) as conn:
        rows = conn.execute(
            "SELECT relname FROM pg_class WHERE relnamespace = 'public'::regnamespace "
            "AND relkind IN ('r', 'p') AND NOT relispartition"
        ).fetchall()
    return {r[0] for r in rows} - {"alembic_version"}


def _not_a_partition(name: str | None, type_: str, parent_names: object) -> bool:
    return not (type_ == "table" and name is not None and partitions.is_partition_name(name))


def _diff(url: str) -> list[object]:
    engine = sa.create_engine(db_engine.sqlalchemy_url(url), poolclass=sa.NullPool)
    with engine.connect() as conn:
        ctx = MigrationContext.configure(
            conn, opts={"compare_type": True, "include_name": _not_a_partition}
        )
        diff = compare_metadata(ctx, metadata)
    engine.dispose()
    return list(diff)


def test_head_matches_tables_module(db_url: str) -> None:
    assert _diff(db_url) == []
    assert _tables(db_url) >= EXPECTED_TABLES
    assert set(metadata.tables) == _tables(db_url)


def test_upgrade_downgrade_upgrade_round_trips(empty_db_url: str) -> None:
    migrate.upgrade(empty_db_url)
    assert set(metadata.tables) == _tables(empty_db_url)
    migrate.downgrade(empty_db_url, "base")
    assert _tables(empty_db_url) == set()
    assert migrate.current_revision(empty_db_url) is None
    before, after = migrate.upgrade(empty_db_url)
    assert before is None
    assert after == migrate.head_revision(empty_db_url)
    assert _diff(empty_db_url) == []


def test_foreign_keys_cascade(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:
        rows = conn.execute(
            """SELECT conrelid::regclass::text, confdeltype FROM pg_constraint
               WHERE contype = 'f' ORDER BY 1"""
        ).fetchall()
    assert {r[0] for r in rows} == {
        "wdk_pay_channels",
        "wdk_sub_orders",
        "omni_subpay_orders",
        "omni_pay_serials",
    }  # backfill_ids has none since 0010: etl prune deletes its rows with their queue rows
    assert {r[1] for r in rows} == {"c"}  # c = ON DELETE CASCADE


def test_migrate_twice_is_a_no_op(empty_db_url: str) -> None:
    first = migrate.upgrade(empty_db_url)
    second = migrate.upgrade(empty_db_url)
    assert first[0] is None
    assert second[0] == second[1] == first[1]


def _etl(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "etl", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.mark.skipif(bool(os.environ.get("ETL_DATABASE_URL")), reason="tests the embedded default")
def test_etl_migrate_with_no_configuration_uses_embedded_cluster(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env["ETL_DATA_DIR"] = str(tmp_path / "data")
    env["ETL_CONFIG"] = ""
    first = _etl("migrate", env=env)
    assert first.returncode == 0, first.stderr
    assert "schema upgraded empty ->" in first.stdout
    second = _etl("migrate", env=env)
    assert second.returncode == 0, second.stderr
    assert "schema already at" in second.stdout
    # The server stopped with its last user; start it again to look at what was created.
    server = db_engine.embedded_server(tmp_path / "data")
    try:
        url = str(server.get_uri(database=db_engine.EMBEDDED_DB))
        assert set(metadata.tables) == _tables(url)
    finally:
        stop_server(server)


def test_bad_setting_fails_at_start_naming_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_TOP_SIGN_METHOD="sha1", ETL_DATA_DIR=str(tmp_path))
    result = _etl("migrate", env=env)
    assert result.returncode == 2
    assert "ETL_TOP_SIGN_METHOD" in result.stderr
    assert "sha1" in result.stderr
    assert not (tmp_path / "pg").exists()  # nothing was started


def test_help_lists_commands() -> None:
    result = _etl("--help", env=dict(os.environ))
    assert result.returncode == 0
    assert "migrate" in result.stdout


def test_0010_drops_the_backfill_ids_keys_and_the_downgrade_restores_them(
    empty_db_url: str,
) -> None:
    url = empty_db_url
    migrate.upgrade(url, "0009")
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sync_queue (api, id_kind, key, priority) "
            "SELECT 'wdk', 'biz', k::text, 100 FROM generate_series(1, 5) k"
        )
        conn.execute(
            "INSERT INTO backfills (api, id_kind, source, fingerprint, ids) "
            "VALUES ('wdk', 'biz', 'ids.txt', 'fp', 5)"
        )
        conn.execute("INSERT INTO backfill_ids SELECT b.id, q.id FROM backfills b, sync_queue q")
    keys = (
        "SELECT count(*) FROM pg_constraint WHERE contype = 'f' "
        "AND conrelid = 'backfill_ids'::regclass"
    )
    assert one(url, keys) == 2

    migrate.upgrade(url)
    assert one(url, keys) == 0
    assert one(url, "SELECT count(*) FROM backfill_ids") == 5  # every membership kept
    with psycopg.connect(url) as conn:  # rows deleted by hand leave memberships behind ...
        conn.execute("DELETE FROM sync_queue WHERE key IN ('4', '5')")
    engine = sa.create_engine(db_engine.sqlalchemy_url(url), poolclass=sa.NullPool)
    with engine.begin() as conn:  # ... which a backfill's count leaves out
        backfills.seal(conn, one(url, "SELECT id FROM backfills"))
    engine.dispose()
    assert one(url, "SELECT ids FROM backfills") == 3

    migrate.downgrade(url, "0009")
    assert one(url, keys) == 2
    assert one(url, "SELECT count(*) FROM backfill_ids") == 3  # the orphans went first
    with psycopg.connect(url) as conn:  # and the keys cascade again
        conn.execute("DELETE FROM sync_queue WHERE key = '3'")
    assert one(url, "SELECT count(*) FROM backfill_ids") == 2
