"""The loader on a real Postgres: idempotent, child replacement, stale guard, atomic batches."""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from etl.db import load
from etl.normalize.orders import NormalizedOrder, normalize_omni, normalize_wdk
from etl.simulator import data

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BIZ = [data.FIRST_DEMO_BIZ_ID + i for i in range(40)]


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url) as c:
        yield c


def wdk(biz: int, at: datetime = T0, epoch: int = 0, **changes: Any) -> NormalizedOrder:
    order = data.wdk_order(biz, epoch=epoch)
    order.update(changes)
    return normalize_wdk(order, at)


def _load(
    conn: psycopg.Connection[Any], api: str, orders: list[NormalizedOrder], **kw: Any
) -> load.LoadResult:
    result = load.load(conn, api, orders, **kw)
    conn.commit()
    return result


def _snapshot(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    out = {}
    for table in (
        "wdk_orders",
        "wdk_pay_channels",
        "wdk_sub_orders",
        "omni_orders",
        "omni_subpay_orders",
        "omni_pay_serials",
        "order_archive",
    ):
        out[table] = conn.execute(f"SELECT * FROM {table} ORDER BY 1, 2").fetchall()
    return out


def _count(conn: psycopg.Connection[Any], sql: str, *args: Any) -> int:
    row = conn.execute(sql, args).fetchone()
    assert row is not None
    return int(row[0])


def test_first_load_inserts_everything(conn: psycopg.Connection[Any]) -> None:
    orders = [wdk(b) for b in BIZ]
    result = _load(conn, "wdk", orders)
    assert result.orders.inserted == len(BIZ)
    assert _count(conn, "SELECT count(*) FROM wdk_orders") == len(BIZ)
    subs = sum(len(o.children["wdk_sub_orders"]) for o in orders)
    chans = sum(len(o.children["wdk_pay_channels"]) for o in orders)
    assert _count(conn, "SELECT count(*) FROM wdk_sub_orders") == subs
    assert _count(conn, "SELECT count(*) FROM wdk_pay_channels") == chans
    assert result.tables["wdk_sub_orders"].inserted == subs
    assert _count(conn, "SELECT count(*) FROM order_archive") == len(BIZ)


def test_nineteen_digit_ids_are_exact(conn: psycopg.Connection[Any]) -> None:
    _load(conn, "wdk", [wdk(BIZ[0])])
    row = conn.execute(
        "SELECT tb_biz_order_id, (etl_raw('wdk', biz_order_id::text)->>'tb_biz_order_id')::bigint"
        " FROM wdk_orders"
    ).fetchone()
    assert row == (data.TB_BASE + BIZ[0], data.TB_BASE + BIZ[0])
    sub = conn.execute("SELECT max(tb_biz_order_id) FROM wdk_sub_orders").fetchone()
    assert sub is not None
    assert sub[0] > 3_725_362_000_000_000_000


@settings(
    max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.sampled_from(BIZ), min_size=1, max_size=15), st.integers(0, 2))
def test_loading_the_same_batch_twice_changes_nothing(
    conn: psycopg.Connection[Any], ids: list[int], epoch: int
) -> None:
    conn.execute("TRUNCATE wdk_orders, order_archive CASCADE")
    conn.commit()
    orders = [wdk(b, epoch=epoch) for b in ids]
    _load(conn, "wdk", orders)
    before = _snapshot(conn)
    changed_at = conn.execute(
        "SELECT biz_order_id, changed_at FROM wdk_orders ORDER BY 1"
    ).fetchall()
    again = _load(conn, "wdk", [wdk(b, epoch=epoch) for b in ids])
    assert again.orders.inserted == again.orders.updated == 0
    assert again.orders.unchanged == len(set(ids))
    after = _snapshot(conn)
    assert after["order_archive"] == before["order_archive"]
    for table in ("wdk_pay_channels", "wdk_sub_orders"):
        assert after[table] == before[table]
    assert (
        conn.execute("SELECT biz_order_id, changed_at FROM wdk_orders ORDER BY 1").fetchall()
        == changed_at
    )


def test_unchanged_order_writes_nothing(conn: psycopg.Connection[Any]) -> None:
    """A re-fetch with the same content rewrites no row (not even to move ``synced_at``: the
    queue row records the fetch), so a re-sync of unchanged orders writes almost no WAL."""
    _load(conn, "wdk", [wdk(BIZ[0])])
    query = (
        "SELECT o.ctid, o.synced_at, o.changed_at, o.fetched_at, s.ctid FROM wdk_sub_orders s "
        "JOIN wdk_orders o ON o.biz_order_id = s.order_biz_order_id ORDER BY s.biz_order_id LIMIT 1"
    )
    first = conn.execute(query).fetchone()
    result = _load(conn, "wdk", [wdk(BIZ[0], T0 + timedelta(minutes=5))])
    assert result.orders.unchanged == 1
    assert conn.execute(query).fetchone() == first
    assert first is not None
    assert first[3] == T0  # the stored payload's fetch, kept for the stale guard


def test_changed_order_replaces_its_children_and_is_archived(conn: psycopg.Connection[Any]) -> None:
    original = data.wdk_order(BIZ[1])
    _load(conn, "wdk", [normalize_wdk(original, T0)])
    changed = copy.deepcopy(original)
    removed = changed["sub_orders"].pop()  # a removed sub-order disappears
    changed["order_status"] = "REFUNDED"
    result = _load(conn, "wdk", [normalize_wdk(changed, T0 + timedelta(hours=1))])
    assert result.orders.updated == 1
    subs = {r[0] for r in conn.execute("SELECT biz_order_id FROM wdk_sub_orders").fetchall()}
    assert subs == {s["biz_order_id"] for s in changed["sub_orders"]}
    assert removed["biz_order_id"] not in subs
    assert _count(conn, "SELECT count(*) FROM order_archive WHERE order_key = %s", str(BIZ[1])) == 2
    row = conn.execute(
        "SELECT order_status, changed_at > first_synced_at FROM wdk_orders"
    ).fetchone()
    assert row == ("REFUNDED", True)


def test_emptied_child_list_deletes_all_children(conn: psycopg.Connection[Any]) -> None:
    _load(conn, "wdk", [wdk(BIZ[2])])
    assert _count(conn, "SELECT count(*) FROM wdk_sub_orders") > 0
    result = _load(
        conn, "wdk", [wdk(BIZ[2], T0 + timedelta(hours=1), sub_orders=[], pay_channels={})]
    )
    assert result.orders.updated == 1
    assert _count(conn, "SELECT count(*) FROM wdk_sub_orders") == 0
    assert _count(conn, "SELECT count(*) FROM wdk_pay_channels") == 0


def test_stale_payload_never_overwrites_a_newer_one(conn: psycopg.Connection[Any]) -> None:
    newer = wdk(BIZ[3], T0 + timedelta(hours=2), order_status="SUCCESS")
    _load(conn, "wdk", [newer])
    older = wdk(BIZ[3], T0, order_status="PAID", sub_orders=[])
    result = _load(conn, "wdk", [older])
    assert result.orders.stale == 1
    assert result.stale == [BIZ[3]]
    row = conn.execute("SELECT order_status, fetched_at FROM wdk_orders").fetchone()
    assert row == ("SUCCESS", T0 + timedelta(hours=2))
    assert _count(conn, "SELECT count(*) FROM wdk_sub_orders") == len(
        newer.children["wdk_sub_orders"]
    )
    assert _count(conn, "SELECT count(*) FROM order_archive") == 1


def test_duplicates_in_one_batch_keep_the_latest(conn: psycopg.Connection[Any]) -> None:
    a = wdk(BIZ[4], T0, order_status="PAID")
    b = wdk(BIZ[4], T0 + timedelta(seconds=1), order_status="PACKAGED")
    result = _load(conn, "wdk", [b, a])
    assert result.orders.inserted == 1
    row = conn.execute("SELECT order_status FROM wdk_orders").fetchone()
    assert row == ("PACKAGED",)


def test_dirty_json_blobs_are_stored_with_their_raw_text(conn: psycopg.Connection[Any]) -> None:
    order = data.wdk_order(BIZ[5])
    order["trade_attributes"] = '{"a":1,}'
    order["pay_channels"][0]["pay_attributes"] = data.BAD_PAY_ATTRIBUTES
    order["sub_orders"][0]["status_change_time"] = "not json at all"
    order["duty_code"] = "ctl\x01\x00chars"
    _load(conn, "wdk", [normalize_wdk(order, T0)])
    row = conn.execute(
        "SELECT trade_attributes, trade_attributes_raw, duty_code FROM wdk_orders"
    ).fetchone()
    assert row == ({"a": 1}, '{"a":1,}', "ctl\x01chars")
    pay = conn.execute(
        "SELECT pay_attributes, pay_attributes_raw FROM wdk_pay_channels WHERE seq = 0"
    ).fetchone()
    assert pay == ({"btn": "C001"}, data.BAD_PAY_ATTRIBUTES)
    sub = conn.execute(
        "SELECT status_change_time, status_change_time_raw FROM wdk_sub_orders WHERE seq = 0"
    ).fetchone()
    assert sub == (None, "not json at all")


def test_a_failure_mid_batch_leaves_the_database_as_before(conn: psycopg.Connection[Any]) -> None:
    _load(conn, "wdk", [wdk(b) for b in BIZ[:5]])
    before = _snapshot(conn)
    good = [wdk(b, T0 + timedelta(hours=1), order_status="X") for b in BIZ[:10]]
    bad = wdk(BIZ[10], T0 + timedelta(hours=1))
    bad.children["wdk_sub_orders"][0]["trd_type"] = 10**6  # too big for smallint: COPY fails
    with pytest.raises(psycopg.errors.NumericValueOutOfRange):
        load.load(conn, "wdk", [*good, bad])
    conn.rollback()
    assert _snapshot(conn) == before
    # and the connection is usable again
    assert _load(conn, "wdk", good).orders.updated == 5


def test_omni_orders_load_and_replace(conn: psycopg.Connection[Any]) -> None:
    oid = data.omni_order_id(7)
    model = data.omni_order(oid, "3031798632", "o7")
    result = _load(conn, "omni", [normalize_omni(model, T0, "3031798632")])
    assert result.orders.inserted == 1
    assert _count(conn, "SELECT count(*) FROM omni_subpay_orders") == len(
        model["subpay_order_list"]
    )
    model2 = copy.deepcopy(model)
    model2["subpay_order_list"] = model2["subpay_order_list"][:1]
    model2["pay_order_serial_infos"] = []
    model2.pop("promotion_info", None)
    result = _load(conn, "omni", [normalize_omni(model2, T0 + timedelta(hours=1), "3031798632")])
    assert result.orders.updated == 1
    assert _count(conn, "SELECT count(*) FROM omni_subpay_orders") == 1
    assert _count(conn, "SELECT count(*) FROM omni_pay_serials") == 0
    row = conn.execute("SELECT order_id, user_id, promotion_id FROM omni_orders").fetchone()
    assert row == (oid, "3031798632", None)


def test_overlapping_batches_on_two_connections_neither_deadlock_nor_lose(db_url: str) -> None:
    errors: list[BaseException] = []

    def worker(offset: int) -> None:
        try:
            with psycopg.connect(db_url) as c:
                for round_ in range(5):
                    at = T0 + timedelta(minutes=round_ * 2 + offset)
                    ids = BIZ[offset * 5 : offset * 5 + 30]
                    load.load(c, "wdk", [wdk(b, at, epoch=round_) for b in reversed(ids)])
                    c.commit()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors
    with psycopg.connect(db_url) as c:
        rows = c.execute(
            "SELECT biz_order_id, etl_raw('wdk', biz_order_id::text), fetched_at FROM wdk_orders"
        ).fetchall()
        assert len(rows) == 35
        for biz, raw, _ in rows:
            subs = c.execute(
                "SELECT count(*) FROM wdk_sub_orders WHERE order_biz_order_id = %s", (biz,)
            ).fetchone()
            assert subs is not None
            assert subs[0] == len(raw["sub_orders"])
