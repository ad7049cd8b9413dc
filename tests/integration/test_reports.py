"""The reporting views on a hand-built data set with known totals."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from decimal import Decimal
from typing import Any

import psycopg
import pytest
import sqlalchemy as sa

from etl import reports
from etl.db import engine as db_engine
from etl.db import load, queue
from etl.normalize.orders import normalize_omni, normalize_wdk
from etl.settings import load_settings

T = datetime(2026, 1, 1, tzinfo=UTC)


def sub(
    biz: int,
    parent: int,
    item: int,
    sku: str,
    original: int,
    *,
    qty: int = 1,
    ns: str = "",
    unit: str = "",
    promo: int = 0,
    member: int = 0,
    share: int = 0,
    trd: int = 1,
) -> dict[str, Any]:
    return {
        "biz_order_id": biz,
        "parent_id": parent,
        "item_code": item,
        "sku_code": sku,
        "original_amt": original,
        "quantity": qty,
        "ns_quantity": ns,
        "sell_unit": unit,
        "promotion_discount_amt": promo,
        "member_discount_amt": member,
        "share_discount_amt": share,
        "trd_type": trd,
    }


def chan(biz: int, pay_type: int, amount: int, trd: int = 1) -> dict[str, Any]:
    return {"biz_order_id": biz, "pay_type": pay_type, "pay_amount": amount, "trd_type": trd}


def order(
    biz: int,
    store: str,
    pay_time: str,
    trd: int,
    original: int,
    pay: int,
    post: int,
    subs: list[dict[str, Any]],
    chans: list[dict[str, Any]],
    **extra: Any,
) -> dict[str, Any]:
    return {
        "biz_order_id": biz,
        "store_id": store,
        "pay_time": pay_time,
        "trd_type": trd,
        "original_amt": original,
        "pay_amt": pay,
        "post_fee": post,
        "sub_orders": subs,
        "pay_channels": chans,
        "order_status": "SUCCESS",
        **extra,
    }


ORDERS = [
    # 07:30 China time on 1 May is 23:30 UTC on 30 April: a China-time day, not a UTC one.
    order(
        1,
        "S1",
        "2024-05-01 07:30:00",
        1,
        10000,
        10000,
        800,
        [
            sub(11, 1, 101, "A", 6000, qty=2, promo=500, member=100),
            sub(12, 1, 202, "W", 4000, ns="1.250", unit="kg", share=200),
        ],
        [chan(1, 11, 6000), chan(1, 4, 4000)],
    ),
    order(
        2,
        "S1",
        "2024-05-01 23:50:00",
        1,
        3000,
        3000,
        0,
        [sub(21, 2, 101, "A", 3000)],
        [chan(2, 11, 3000)],
    ),
    order(
        3,
        "S1",
        "2024-05-01 12:00:00",
        2,
        3000,
        3000,
        0,
        [sub(31, 3, 101, "A", 3000, trd=2)],
        [chan(3, 11, 3000, trd=2)],
    ),
    # 00:10 China time on 2 May is still 1 May in UTC.
    order(
        4,
        "S2",
        "2024-05-02 00:10:00",
        1,
        1600,
        1600,
        0,
        [sub(41, 4, 202, "W", 1600, ns="0.500", unit="kg")],
        [chan(4, 4, 1000), chan(4, 15, 500)],
    ),  # channels short of pay_amt by 100
    order(
        5,
        "S2",
        "2024-05-03 10:00:00",
        1,
        5000,
        5000,
        0,
        [sub(51, 5, 101, "A", 4000)],
        [chan(5, 11, 5000)],  # sub-orders short by 1000
        trade_attributes="”{not json",
        surprise_field=1,
    ),
]


@pytest.fixture
def conn(db_url: str) -> Iterator[sa.Connection]:
    with psycopg.connect(db_url) as pg:
        load.load(pg, "wdk", [normalize_wdk(o, T) for o in ORDERS])
        omni = [
            {
                "order_id": "900",
                "o2o_guide_id": 7,
                "o2o_guide_name": "小王",
                "o2o_shop_id": "P1",
                "o2o_shop_name": "西湖店",
                "total_fee": 20000,
                "voucher_price": 1000,
                "promotion_info": {"promotion_id": 1, "promotion_amount": 500},
            },
            {
                "order_id": "901",
                "o2o_guide_id": 7,
                "o2o_guide_name": "小王",
                "o2o_shop_id": "P1",
                "o2o_shop_name": "西湖店",
                "total_fee": 5000,
                "voucher_price": 0,
            },
        ]
        load.load(pg, "omni", [normalize_omni(m, T, "7") for m in omni])
        pg.commit()
    engine = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), db_url)
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", ["6", "7"])
        yield c
    engine.dispose()


def rows(c: sa.Connection, name: str, **kw: Any) -> list[dict[str, Any]]:
    columns, data = reports.fetch(c, reports.REPORTS[name], **kw)
    return [dict(zip(columns, r, strict=True)) for r in data]


def test_daily_sales_by_china_day(conn: sa.Connection) -> None:
    got = {(r["store_id"], r["day"]): r for r in rows(conn, "daily-sales")}
    assert set(got) == {
        ("S1", date(2024, 5, 1)),
        ("S2", date(2024, 5, 2)),
        ("S2", date(2024, 5, 3)),
    }
    s1 = got["S1", date(2024, 5, 1)]
    assert (s1["orders"], s1["sales"], s1["refunds"]) == (3, 2, 1)
    assert s1["original_fen"] == 13000
    assert (s1["promotion_discount_fen"], s1["member_discount_fen"], s1["share_discount_fen"]) == (
        500,
        100,
        200,
    )
    assert s1["post_fee_fen"] == 800
    assert (s1["paid_fen"], s1["refunded_fen"], s1["net_fen"]) == (13000, 3000, 10000)
    assert s1["net_yuan"] == Decimal("100.00")
    assert s1["discount_yuan"] == Decimal("8.00")
    assert got["S2", date(2024, 5, 2)]["paid_fen"] == 1600


def test_daily_sales_filters(conn: sa.Connection) -> None:
    assert [r["day"] for r in rows(conn, "daily-sales", since=date(2024, 5, 2))] == [
        date(2024, 5, 2),
        date(2024, 5, 3),
    ]
    assert [r["store_id"] for r in rows(conn, "daily-sales", store="S1")] == ["S1"]
    assert rows(conn, "daily-sales", until=date(2024, 4, 30)) == []


def test_pay_channel_mix(conn: sa.Connection) -> None:
    got = {(r["store_id"], r["day"], r["pay_type"]): r for r in rows(conn, "pay-channel-mix")}
    alipay = got["S1", date(2024, 5, 1), 11]
    assert alipay["pay_type_name"] == "支付宝"
    assert (alipay["payments"], alipay["amount_fen"]) == (2, 9000)
    assert (alipay["refunds"], alipay["refund_fen"]) == (1, 3000)
    cash = got["S1", date(2024, 5, 1), 4]
    assert (cash["pay_type_name_en"], cash["payments"], cash["amount_fen"]) == (
        "cash (POS)",
        1,
        4000,
    )
    assert got["S2", date(2024, 5, 2), 15]["amount_yuan"] == Decimal("5.00")


def test_item_sales_standard_and_weighed(conn: sa.Connection) -> None:
    got = {(r["item_code"], r["sku_code"], r["day"]): r for r in rows(conn, "item-sales")}
    a = got[101, "A", date(2024, 5, 1)]
    assert (a["lines"], a["units"], a["weighed_quantity"]) == (2, 3, 0)
    assert (a["original_fen"], a["discount_fen"], a["amount_fen"]) == (9000, 600, 8400)
    assert a["refunded_fen"] == 3000
    w = got[202, "W", date(2024, 5, 1)]
    assert (w["units"], w["weighed_quantity"], w["weighed_unit"]) == (0, Decimal("1.250"), "kg")
    assert w["amount_fen"] == 3800
    assert got[202, "W", date(2024, 5, 2)]["weighed_quantity"] == Decimal("0.500")


def test_omni_guides(conn: sa.Connection) -> None:
    (guide,) = rows(conn, "omni-guides")
    assert (guide["o2o_guide_id"], guide["o2o_shop_id"], guide["orders"]) == (7, "P1", 2)
    assert (guide["total_fee"], guide["voucher_price"], guide["promotion_amount"]) == (
        25000,
        1000,
        500,
    )


def test_sync_freshness(conn: sa.Connection) -> None:
    got = {(r["api"], r["store_id"]): r for r in rows(conn, "sync-freshness")}
    assert got["wdk", "S1"]["orders"] == 3
    assert got["wdk", "S2"]["orders"] == 2
    assert got["omni", "P1"]["orders"] == 2
    assert got["wdk", "S1"]["queue_backlog"] == 2
    assert got["omni", "P1"]["queue_backlog"] == 0
    assert got["wdk", "S1"]["lag"].total_seconds() >= 0


def test_sync_freshness_never_shows_a_future_time_as_oldest_pending(conn: sa.Connection) -> None:
    """Ids waiting for a later retry or re-check are not "pending since" a future time, and
    not-found ids are counted apart from the backlog."""
    policy = queue.Policy(not_found_checks=3, not_found_delay=3600, retry_base=3600)
    queue.enqueue(conn, "wdk", "biz", ["8", "9"])
    items = {i.key: i for i in queue.claim(conn, "wdk", 10, 60, "w", None)}
    queue.ack(
        conn,
        [
            queue.Outcome(items["6"], "not_found"),
            queue.Outcome(items["7"], "failed", "TransportError", "reset"),
            queue.Outcome(items["8"], "done"),
        ],
        policy,
        "w",
    )
    queue.release(conn, [items["9"]], "w")
    got = {(r["api"], r["store_id"]): r for r in rows(conn, "sync-freshness")}["wdk", "S1"]
    now = conn.execute(sa.select(sa.func.now())).scalar_one()
    assert got["queue_oldest_pending"] is not None
    assert got["queue_oldest_pending"] <= now  # "9", due now; not "7"'s retry in an hour
    assert got["queue_backlog"] == 2  # "7" (failed, retried later) and "9"
    assert got["queue_not_found"] == 1
    queue.release(conn, [], "w")
    conn.execute(sa.text("UPDATE sync_queue SET state = 'done' WHERE key = '9'"))
    got = {(r["api"], r["store_id"]): r for r in rows(conn, "sync-freshness")}["wdk", "S1"]
    assert got["queue_oldest_pending"] is None  # only a retry in an hour: nothing is due


def test_data_quality(conn: sa.Connection) -> None:
    got = {(r["check_name"], r["order_key"]) for r in rows(conn, "data-quality")}
    assert got == {
        ("pay_channels_total", "4"),
        ("sub_orders_total", "5"),
        ("unparseable_json", "5"),
        ("unknown_fields", "5"),
    }
    detail = {r["check_name"]: r["detail"] for r in rows(conn, "data-quality", store="S2")}
    assert "1500" in detail["pay_channels_total"]
    assert "trade_attributes" in detail["unparseable_json"]
    assert "surprise_field" in detail["unknown_fields"]


def test_every_report_is_a_view(conn: sa.Connection) -> None:
    views = set(
        conn.execute(sa.text("SELECT viewname FROM pg_views WHERE schemaname = 'public'")).scalars()
    )
    assert {r.view for r in reports.REPORTS.values()} == views


def test_output_formats() -> None:
    cols, data = ["a", "b"], [(1, Decimal("2.50")), (None, datetime(2024, 1, 1, tzinfo=UTC))]
    assert reports.as_csv(cols, data) == "a,b\n1,2.50\n,2024-01-01T08:00:00+08:00\n"
    assert reports.as_json(cols, data).startswith('[\n  {\n    "a": 1,\n    "b": "2.50"')
    table = reports.as_table(cols, data)
    assert table.splitlines()[0].startswith("a")
    assert table.endswith("(2 rows)")
