"""`etl replay` rebuilds rows from raw payloads, without calling the platform."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl import pipeline
from etl.db import load
from etl.normalize.orders import normalize_omni, normalize_wdk
from etl.simulator import data

T0 = datetime(2026, 3, 1, tzinfo=UTC)
TABLES = (
    "wdk_orders",
    "wdk_pay_channels",
    "wdk_sub_orders",
    "omni_orders",
    "omni_subpay_orders",
    "omni_pay_serials",
    "order_archive",
)


def _dump(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}


def test_replay_after_truncating_children_restores_them_exactly(
    db_url: str, engine: Engine
) -> None:
    with psycopg.connect(db_url) as conn:
        load.load(
            conn,
            "wdk",
            [normalize_wdk(data.wdk_order(data.FIRST_DEMO_BIZ_ID + i), T0) for i in range(1500)],
        )
        oids = [data.omni_order_id(i) for i in range(20)]
        load.load(
            conn, "omni", [normalize_omni(data.omni_order(o), T0, "3031798632") for o in oids]
        )
        conn.commit()
        before = _dump(conn)
        conn.execute(
            "TRUNCATE wdk_pay_channels, wdk_sub_orders, omni_subpay_orders, omni_pay_serials"
        )
        conn.execute("UPDATE wdk_orders SET pay_amt = NULL, store_id = 'garbled'")
        conn.commit()
        counters = pipeline.replay(engine)
        assert counters.orders_updated == 1520
        assert _dump(conn) == before
        run = conn.execute("SELECT kind, status, orders_updated FROM sync_runs").fetchone()
        assert run == ("replay", "ok", 1520)


def test_replay_since_only_touches_recent_orders(db_url: str, engine: Engine) -> None:
    with psycopg.connect(db_url) as conn:
        load.load(
            conn,
            "wdk",
            [normalize_wdk(data.wdk_order(data.FIRST_DEMO_BIZ_ID + i), T0) for i in range(10)],
        )
        conn.commit()
        conn.execute(
            "UPDATE wdk_orders SET synced_at = %s WHERE biz_order_id < %s",
            (T0, data.FIRST_DEMO_BIZ_ID + 5),
        )
        conn.execute("TRUNCATE wdk_sub_orders")
        conn.commit()
        counters = pipeline.replay(engine, ("wdk",), since=datetime(2026, 6, 1, tzinfo=UTC))
        assert counters.orders_updated == 5
        rows = conn.execute(
            "SELECT DISTINCT order_biz_order_id FROM wdk_sub_orders ORDER BY 1"
        ).fetchall()
        assert [r[0] for r in rows] == [data.FIRST_DEMO_BIZ_ID + i for i in range(5, 10)]
    with engine.connect() as c:
        assert c.execute(sa.text("SELECT count(*) FROM order_archive")).scalar_one() == 10
