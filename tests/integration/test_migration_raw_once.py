"""Migration 0008 on a database holding orders in the old layout (raw jsonb on every order row
and in the archive): every version stays reachable and replay rebuilds identical rows."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
from psycopg import sql
from psycopg.types.json import Jsonb

from etl import pipeline
from etl.db import engine as db_engine
from etl.db import migrate
from etl.normalize.orders import NormalizedOrder, normalize_omni, normalize_wdk
from etl.settings import load_settings
from etl.simulator import data

T0 = datetime(2026, 2, 1, tzinfo=UTC)
CHILD_ORDER = ("wdk_pay_channels", "wdk_sub_orders", "omni_subpay_orders", "omni_pay_serials")
TABLES = ("wdk_orders", "omni_orders", *CHILD_ORDER)


def _insert(conn: psycopg.Connection[Any], table: str, row: dict[str, Any]) -> None:
    cols = list(row)
    values = [Jsonb(orjson.loads(v)) if c == "raw" else row[c] for c, v in row.items()]
    conn.execute(
        sql.SQL("INSERT INTO {} ({}) VALUES ({})").format(
            sql.Identifier(table),
            sql.SQL(", ").join(map(sql.Identifier, cols)),
            sql.SQL(", ").join(sql.Placeholder() * len(cols)),
        ),
        values,
    )


def _old_write(
    conn: psycopg.Connection[Any], order: NormalizedOrder, *, archive: bool, replace: bool
) -> None:
    """What the old loader left behind: raw jsonb on the order row, a copy in the archive."""
    table = "wdk_orders" if order.api == "wdk" else "omni_orders"
    key = "biz_order_id" if order.api == "wdk" else "order_id"
    if replace:
        conn.execute(
            sql.SQL("DELETE FROM {} WHERE {} = %s").format(
                sql.Identifier(table), sql.Identifier(key)
            ),
            (order.key,),
        )
    _insert(conn, table, dict(order.parent))
    for name, rows in order.children.items():
        for row in rows:
            _insert(conn, name, row)
    if archive:
        conn.execute(
            "INSERT INTO order_archive (api, order_key, fetched_at, payload_hash, raw) "
            "VALUES (%s, %s, %s, %s, %s)",
            (
                order.api,
                str(order.key),
                order.fetched_at,
                order.parent["payload_hash"],
                Jsonb(orjson.loads(order.parent["raw"])),
            ),
        )


def _rows(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table in TABLES:
        cols = [
            r[0]
            for r in conn.execute(
                "SELECT column_name FROM information_schema.columns WHERE table_name = %s "
                "AND column_name <> 'raw' ORDER BY ordinal_position",
                (table,),
            )
        ]
        out[table] = conn.execute(
            sql.SQL("SELECT {} FROM {} ORDER BY 1, 2").format(
                sql.SQL(", ").join(map(sql.Identifier, cols)), sql.Identifier(table)
            )
        ).fetchall()
    return out


def test_upgrade_keeps_every_version_and_replay_is_identical(empty_db_url: str) -> None:
    url = empty_db_url
    migrate.upgrade(url, "0004")
    wdk = [data.wdk_order(data.FIRST_DEMO_BIZ_ID + i) for i in range(12)]
    changed = copy.deepcopy(wdk[0])
    changed["order_status"] = "REFUNDED"
    omni_id = data.omni_order_id(3)
    with psycopg.connect(url) as conn:
        for i, order in enumerate(wdk):
            # order 11 was written before the archive existed: its only copy is on its row
            _old_write(conn, normalize_wdk(order, T0), archive=i != 11, replace=False)
        _old_write(
            conn, normalize_wdk(changed, T0 + timedelta(hours=1)), archive=True, replace=True
        )
        _old_write(
            conn,
            normalize_omni(data.omni_order(omni_id), T0, "3031798632"),
            archive=True,
            replace=False,
        )
        conn.commit()
        old_raw = dict(
            conn.execute(
                "SELECT biz_order_id::text, raw FROM wdk_orders UNION ALL "
                "SELECT order_id, raw FROM omni_orders"
            ).fetchall()
        )
        before = _rows(conn)
    migrate.upgrade(url)
    assert migrate.current_revision(url) == migrate.head_revision(url)  # 0008, then 0009
    with psycopg.connect(url) as conn:
        assert _rows(conn) == before  # nothing but the raw column changed
        versions = conn.execute(
            "SELECT order_key, count(*) FROM order_archive GROUP BY 1 ORDER BY 1"
        ).fetchall()
        counts = dict(versions)
        assert counts[str(data.FIRST_DEMO_BIZ_ID)] == 2  # both versions reachable
        assert counts[str(data.FIRST_DEMO_BIZ_ID + 11)] == 1  # archived by the migration
        assert len(counts) == 13
        for key, raw in old_raw.items():
            api = "omni" if key == omni_id else "wdk"
            assert conn.execute("SELECT etl_raw(%s, %s)", (api, key)).fetchone() == (raw,)
        first = conn.execute(
            "SELECT raw::jsonb FROM order_archive WHERE order_key = %s ORDER BY fetched_at",
            (str(data.FIRST_DEMO_BIZ_ID),),
        ).fetchall()
        assert [r[0]["order_status"] for r in first] == [wdk[0]["order_status"], "REFUNDED"]
    engine = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), url)
    try:
        with psycopg.connect(url) as conn:
            conn.execute("TRUNCATE " + ", ".join(CHILD_ORDER))
            conn.commit()
        counters = pipeline.replay(engine, processes=0)
    finally:
        engine.dispose()
    assert counters.orders_updated == 13
    with psycopg.connect(url) as conn:
        assert _rows(conn) == before
    # and back: the old layout again, with the current payload on every row
    migrate.downgrade(url, "0004")
    with psycopg.connect(url) as conn:
        raws = dict(
            conn.execute(
                "SELECT biz_order_id::text, raw FROM wdk_orders UNION ALL "
                "SELECT order_id, raw FROM omni_orders"
            ).fetchall()
        )
        assert raws == old_raw
