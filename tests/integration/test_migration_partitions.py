"""Migration 0009 on a database that already holds orders: order_archive becomes partitioned by
month with every row in place, etl_raw and new loads work, and the downgrade keeps the data."""

from __future__ import annotations

import copy
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
from psycopg import sql

from etl.db import load, migrate, partitions
from etl.normalize.orders import normalize_wdk
from etl.simulator import data
from tests.helpers import one, q

NOW = datetime.now(UTC)
KEYS = [data.FIRST_DEMO_BIZ_ID + i for i in range(12)]
STATUSES = ("PAID", "PACKAGED", "SUCCESS", "REFUNDED")
ROWS = "SELECT id, api, order_key, fetched_at, payload_hash, raw, archived_at FROM order_archive"


def _load(url: str, key: int, status: str, at: datetime) -> None:
    order = copy.deepcopy(data.wdk_order(key))
    order["order_status"] = status
    with psycopg.connect(url) as conn:
        load.load(conn, "wdk", [normalize_wdk(order, at)])


def _fill(url: str) -> None:
    """Twelve orders, each with versions spread over the last eight months."""
    for i, key in enumerate(KEYS):
        for j, status in enumerate(STATUSES[: 1 + i % 4]):
            _load(url, key, status, NOW - timedelta(days=240 - 60 * j - i))


def _raw(url: str) -> dict[int, Any]:
    return {k: one(url, "SELECT etl_raw('wdk', %s)", str(k)) for k in KEYS}


def test_0009_partitions_an_archive_that_holds_data_and_downgrades(empty_db_url: str) -> None:
    url = empty_db_url
    migrate.upgrade(url, "0008")
    _fill(url)
    role = f"etl_test_reader_{os.getpid()}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE IF EXISTS {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("GRANT SELECT ON order_archive TO {}").format(sql.Identifier(role)))
    before = sorted(q(url, ROWS))
    raw = _raw(url)
    months = {partitions.month_start(r[3]) for r in before}
    assert len(before) == 30
    assert len(months) >= 5

    migrate.upgrade(url)
    assert one(url, "SELECT relkind FROM pg_class WHERE relname = 'order_archive'") == "p"
    assert sorted(q(url, ROWS)) == before  # every row, with its id
    placed = q(url, "SELECT tableoid::regclass::text, fetched_at FROM order_archive")
    assert all(name == partitions.name_of(partitions.month_start(at)) for name, at in placed)
    assert one(url, "SELECT count(*) FROM order_archive_default") == 0
    ahead = {partitions.name_of(m) for m in partitions.months_ahead(NOW)}
    assert ahead <= {r[0] for r in q(url, "SELECT relname FROM pg_class WHERE relispartition")}
    assert _raw(url) == raw
    assert one(url, "SELECT has_table_privilege(%s, 'order_archive', 'SELECT')", role)
    assert q(
        url,
        "SELECT conname FROM pg_constraint WHERE conrelid = 'order_archive'::regclass "
        "AND contype = 'p'",
    ) == [("pk_order_archive",)]

    # new loads: the sequence goes on, the version lands in this month's partition
    top = max(r[0] for r in before)
    _load(url, KEYS[0], "CLOSED", NOW)
    new_id, where = q(
        url,
        "SELECT id, tableoid::regclass::text FROM order_archive "
        "WHERE raw::jsonb->>'order_status' = 'CLOSED'",
    )[0]
    assert new_id > top
    assert where == partitions.name_of(partitions.month_start(NOW))
    assert one(url, "SELECT etl_raw('wdk', %s)->>'order_status'", str(KEYS[0])) == "CLOSED"
    after = sorted(q(url, ROWS))

    migrate.downgrade(url, "0008")
    assert one(url, "SELECT relkind FROM pg_class WHERE relname = 'order_archive'") == "r"
    assert sorted(q(url, ROWS)) == after
    assert (
        one(
            url, "SELECT count(*) FROM pg_class WHERE relname ~ '^order_archive_' AND relkind = 'r'"
        )
        == 0
    )
    assert one(url, "SELECT has_table_privilege(%s, 'order_archive', 'SELECT')", role)
    _load(url, KEYS[1], "CLOSED", NOW)  # the plain table takes loads again
    assert one(url, "SELECT count(*) FROM order_archive") == len(after) + 1
    migrate.upgrade(url)
    assert one(url, "SELECT count(*) FROM order_archive") == len(after) + 1
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_etl_raw_and_replay_find_a_version_archived_with_another_time(db_url: str) -> None:
    """They read the partition of the row's fetched_at first; a version archived with another
    time (data older than the loader that keeps them equal) is still found."""
    from etl import pipeline
    from etl.db import engine as db_engine
    from etl.settings import load_settings

    for i, key in enumerate(KEYS[:3]):
        _load(db_url, key, "PAID", NOW - timedelta(days=100 + i))
    expected = _raw(db_url)
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE wdk_orders SET fetched_at = fetched_at + interval '40 days' "
            "WHERE biz_order_id = %s",
            (KEYS[0],),
        )
    assert _raw(db_url) == expected
    engine = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), db_url)
    try:
        counters = pipeline.replay(engine, processes=0)
    finally:
        engine.dispose()
    assert counters.orders_updated == 3
    assert counters.failed == 0
