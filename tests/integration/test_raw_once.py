"""Raw JSON stored once per version, unchanged orders never normalized, the COPY fast path and
its fallback under a concurrent writer — on a real Postgres."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import psycopg
import pytest
from sqlalchemy.engine import Engine

from etl import loading, pipeline
from etl.db import load
from etl.normalize import orders as normalize_orders
from etl.normalize import pool
from etl.normalize.orders import normalize_wdk
from etl.simulator import data

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BIZ = [data.FIRST_DEMO_BIZ_ID + i for i in range(30)]
TABLES = ("wdk_orders", "wdk_pay_channels", "wdk_sub_orders", "order_archive")


@pytest.fixture
def conn(db_url: str) -> Iterator[psycopg.Connection[Any]]:
    with psycopg.connect(db_url) as c:
        yield c


def _one(conn: psycopg.Connection[Any], query: str, *args: Any) -> Any:
    row = conn.execute(query, args).fetchone()
    assert row is not None
    return row[0]


def _dump(conn: psycopg.Connection[Any]) -> dict[str, list[tuple[Any, ...]]]:
    return {t: conn.execute(f"SELECT * FROM {t} ORDER BY 1, 2").fetchall() for t in TABLES}


def _content(conn: psycopg.Connection[Any]) -> dict[str, list[Any]]:
    """Every row of TABLES without what the database stamps (serial ids, now())."""
    stamped = "- 'id' - 'archived_at' - 'first_synced_at' - 'synced_at' - 'changed_at'"
    return {
        t: sorted(str(r[0]) for r in conn.execute(f"SELECT to_jsonb(x) {stamped} FROM {t} x"))
        for t in TABLES
    }


def _page(orders: list[dict[str, Any]], *, wrapped: bool = False) -> bytes:
    """One captured alibaba.wdk.order.get response body, in either JSON shape."""
    if wrapped:
        body: dict[str, Any] = {
            "alibaba_wdk_order_get_response": {
                "result": {"return_code": "SUCCESS", "orders": {"order": orders}},
                "request_id": "r1",
            }
        }
    else:
        body = {"result": {"return_code": "SUCCESS", "orders": orders}, "request_id": "r1"}
    return orjson.dumps(body)


def _run(conn: psycopg.Connection[Any], pages: list[bytes], at: datetime) -> loading.Totals:
    lines = [(f"f:{i + 1}", p) for i, p in enumerate(pages)]
    with pool.Normalizer(0) as normalizer:
        digests = [loading.completed(pool.digest_lines("wdk", lines, at))]
        return loading.run(conn, "wdk", digests, normalizer)


def test_every_version_is_stored_once_and_reachable(conn: psycopg.Connection[Any]) -> None:
    v0 = data.wdk_order(BIZ[0])
    v1 = copy.deepcopy(v0)
    v1["order_status"] = "REFUNDED"
    for order, at in ((v0, T0), (v1, T0 + timedelta(hours=1)), (v1, T0 + timedelta(hours=2))):
        load.load(conn, "wdk", [normalize_wdk(order, at)])
        conn.commit()
    cols = {
        r[0]
        for r in conn.execute(
            "SELECT column_name FROM information_schema.columns WHERE table_name = 'wdk_orders'"
        )
    }
    assert "raw" not in cols  # the order row does not carry the payload a second time
    versions = conn.execute(
        "SELECT fetched_at, raw::jsonb FROM order_archive WHERE order_key = %s ORDER BY 1",
        (str(BIZ[0]),),
    ).fetchall()
    assert [v[0] for v in versions] == [T0, T0 + timedelta(hours=1)]  # the unchanged one: none
    assert versions[0][1]["order_status"] == v0["order_status"]
    assert versions[1][1]["order_status"] == "REFUNDED"
    current = _one(conn, "SELECT etl_raw('wdk', %s)", str(BIZ[0]))
    assert current == versions[1][1]
    assert current["tb_biz_order_id"] == v0["tb_biz_order_id"]  # 19 digits, exact


def test_replay_from_the_archive_restores_rows_identically(
    conn: psycopg.Connection[Any], engine: Engine
) -> None:
    pages = [
        _page([data.wdk_order(b) for b in BIZ[:15]]),
        _page([data.wdk_order(b) for b in BIZ[15:]]),
    ]
    _run(conn, pages, T0)
    changed = [data.wdk_order(b, epoch=1, change_rate=1.0) for b in BIZ[:5]]
    _run(conn, [_page(changed)], T0 + timedelta(hours=1))
    before = _dump(conn)
    conn.execute("TRUNCATE wdk_pay_channels, wdk_sub_orders")
    conn.execute("UPDATE wdk_orders SET pay_amt = NULL, order_status = 'garbled'")
    conn.commit()
    counters = pipeline.replay(engine, ("wdk",), processes=1)  # through a real process pool
    assert counters.orders_updated == len(BIZ)
    assert _dump(conn) == before


def test_unchanged_orders_are_not_normalized(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = [0]
    real = normalize_orders.normalize_wdk

    def counting(*args: Any, **kw: Any) -> Any:
        calls[0] += 1
        return real(*args, **kw)

    monkeypatch.setattr(load, "normalize_wdk", counting)  # the one every path calls
    orders = [data.wdk_order(b) for b in BIZ]
    first = _run(conn, [_page(orders[:10]), _page(orders[10:], wrapped=True)], T0)
    assert (first.inserted, first.normalized, calls[0]) == (len(BIZ), len(BIZ), len(BIZ))
    wal = _one(conn, "SELECT pg_current_wal_insert_lsn()")
    conn.commit()
    # the same orders again, in the other JSON shape: the same hash, nothing normalized
    calls[0] = 0
    again = _run(conn, [_page(orders[:10], wrapped=True), _page(orders[10:])], T0 + timedelta(1))
    assert (again.unchanged, again.normalized, calls[0]) == (len(BIZ), 0, 0)
    written = _one(conn, "SELECT pg_current_wal_insert_lsn() - %s::pg_lsn", str(wal))
    assert written < 64 * 1024  # a few commit records and the lookups, no row rewritten
    # three changed: only those three are normalized
    calls[0] = 0
    for i in (1, 7, 20):
        orders[i] = copy.deepcopy(orders[i])
        orders[i]["order_status"] = "SUCCESS"
    third = _run(conn, [_page(orders)], T0 + timedelta(2))
    assert (third.updated, third.unchanged, third.normalized, calls[0]) == (3, 27, 3, 3)


def test_an_order_changed_after_the_hash_check_is_normalized_under_the_lock(
    conn: psycopg.Connection[Any], db_url: str
) -> None:
    order = data.wdk_order(BIZ[0])
    lines = [("f:1", _page([order]))]
    load.load(conn, "wdk", [normalize_wdk(order, T0)])
    conn.commit()
    digested = pool.digest_lines("wdk", lines, T0 + timedelta(hours=2))
    stored = load.stored_hashes(conn, "wdk", [BIZ[0]])
    assert loading.needs_rows(digested.orders, stored) == []  # looks unchanged: not normalized
    with psycopg.connect(db_url) as other:  # meanwhile another writer stores other content
        other_order = copy.deepcopy(order)
        other_order["order_status"] = "CLOSED"
        load.load(other, "wdk", [normalize_wdk(other_order, T0 + timedelta(hours=1))])
        other.commit()
    result = load.load(conn, "wdk", digested.orders)
    conn.commit()
    assert (result.orders.updated, result.late_normalized) == (1, 1)
    assert _one(conn, "SELECT order_status FROM wdk_orders") == order["order_status"]


def test_new_orders_take_the_fast_path(conn: psycopg.Connection[Any]) -> None:
    result = load.load(conn, "wdk", [normalize_wdk(data.wdk_order(b), T0) for b in BIZ])
    conn.commit()
    assert result.fast_path
    assert result.orders.inserted == len(BIZ)
    assert _one(conn, "SELECT count(*) FROM order_archive") == len(BIZ)


@pytest.mark.parametrize("theirs_newer", [True, False])
def test_fast_path_falls_back_when_a_concurrent_writer_inserts_a_key(
    conn: psycopg.Connection[Any], db_url: str, monkeypatch: pytest.MonkeyPatch, theirs_newer: bool
) -> None:
    """Between our lock (no key exists yet) and our COPY, another connection commits one of
    the batch's orders: the COPY meets a unique violation, the savepoint is rolled back, and the
    staged upsert applies the stale guard to that order."""
    raced = BIZ[3]
    their_order = data.wdk_order(raced)
    their_order["order_status"] = "THEIRS"
    their_at = T0 + timedelta(hours=1) if theirs_newer else T0 - timedelta(hours=1)
    real_existing = load._existing
    raced_once: list[bool] = []

    def existing_then_race(*args: Any, **kw: Any) -> Any:
        found = real_existing(*args, **kw)
        if raced_once:  # the other writer's own load
            return found
        raced_once.append(True)
        with psycopg.connect(db_url) as other:
            load.load(other, "wdk", [normalize_wdk(their_order, their_at)])
            other.commit()
        return found

    monkeypatch.setattr(load, "_existing", existing_then_race)
    ours = [normalize_wdk(data.wdk_order(b), T0) for b in BIZ[:10]]
    result = load.load(conn, "wdk", ours)
    conn.commit()
    assert not result.fast_path
    status = _one(conn, "SELECT order_status FROM wdk_orders WHERE biz_order_id = %s", raced)
    subs = _one(conn, "SELECT count(*) FROM wdk_sub_orders WHERE order_biz_order_id = %s", raced)
    archived = _one(conn, "SELECT count(*) FROM order_archive WHERE order_key = %s", str(raced))
    if theirs_newer:
        assert result.stale == [raced]
        assert (result.orders.inserted, result.orders.updated) == (9, 0)
        assert status == "THEIRS"
        assert archived == 1  # theirs only: ours was refused, so not archived
    else:
        assert result.stale == []
        assert (result.orders.inserted, result.orders.updated) == (9, 1)
        assert status == data.wdk_order(raced)["order_status"]
        assert archived == 2  # both versions
    assert subs == len(data.wdk_order(raced)["sub_orders"])
    assert _one(conn, "SELECT count(*) FROM wdk_orders") == 10
    assert _one(conn, "SELECT count(*) FROM order_archive") == 10 + (0 if theirs_newer else 1)


def test_a_first_load_normalizes_later_batches_in_one_pass_with_the_same_rows(
    conn: psycopg.Connection[Any], monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(loading, "BATCH_LINES", 1)  # a batch per page: the mix is seen early
    orders = [data.wdk_order(b) for b in BIZ]
    path = tmp_path / "pages.jsonl"
    path.write_bytes(
        b"\n".join(_page(orders[i : i + 3], wrapped=i % 2 == 0) for i in range(0, 30, 3))
    )
    seen: list[bool] = []
    with pool.Normalizer(1) as normalizer:  # a real process pool
        first = loading.load_files(
            conn, "wdk", [str(path)], normalizer, T0, on_batch=lambda d, _r: seen.append(d.encoded)
        )
        assert (first.inserted, first.normalized) == (len(BIZ), len(BIZ))
        assert seen[0] is False  # the first batch is checked before anything is normalized
        assert True in seen  # later ones, seen to be new, are encoded in the same pass
        one_pass = _content(conn)
        conn.execute("TRUNCATE wdk_orders, wdk_pay_channels, wdk_sub_orders, order_archive")
        conn.commit()
        _run(conn, path.read_bytes().split(b"\n"), T0)
        assert _content(conn) == one_pass  # the two-pass path stores the same rows
        seen.clear()
        again = loading.load_files(
            conn,
            "wdk",
            [str(path)],
            normalizer,
            T0 + timedelta(1),
            on_batch=lambda d, _r: seen.append(d.encoded),
        )
    assert (again.unchanged, again.normalized) == (len(BIZ), 0)
    assert True not in seen  # a re-sync never encodes before the hash check
