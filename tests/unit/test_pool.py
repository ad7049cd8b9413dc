"""The pure steps the normalizer processes run: digesting captured lines, encoding rows."""

from __future__ import annotations

import os
import pickle
import time
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from etl import errors
from etl.db import load
from etl.normalize import pool
from etl.normalize.orders import normalize_omni, normalize_wdk
from etl.simulator import data

AT = datetime(2026, 3, 1, tzinfo=UTC)


def _wdk_body(orders: list[dict[str, Any]], wrapped: bool) -> bytes:
    if wrapped:
        return orjson.dumps(
            {
                "alibaba_wdk_order_get_response": {
                    "result": {"return_code": "SUCCESS", "orders": {"order": orders}}
                }
            }
        )
    return orjson.dumps({"result": {"return_code": "SUCCESS", "orders": orders}})


def test_both_shapes_and_single_orders_digest_alike() -> None:
    orders = [data.wdk_order(data.FIRST_DEMO_BIZ_ID + i) for i in range(3)]
    wrapped = dict(orders[0])
    wrapped["sub_orders"] = {"sub_order": wrapped["sub_orders"]}
    wrapped["pay_channels"] = {"pay_channel": wrapped["pay_channels"]}
    lines = [
        ("a:1", _wdk_body(orders, wrapped=False)),
        ("a:2", _wdk_body([wrapped, *orders[1:]], wrapped=True)),
        ("a:3", orjson.dumps(orders[2])),
    ]
    got = pool.digest_lines("wdk", lines, AT)
    assert got.errors == []
    assert [o.key for o in got.orders] == [o["biz_order_id"] for o in orders * 2] + [
        orders[2]["biz_order_id"]
    ]
    by_line = got.orders[:3], got.orders[3:6]
    assert [o.payload_hash for o in by_line[0]] == [o.payload_hash for o in by_line[1]]
    assert by_line[0][0].raw == by_line[1][0].raw  # the simplified shape is what is stored


def test_bad_lines_are_reported_with_where_and_why() -> None:
    lines = [
        ("f:1", b'{"error_response":{"code":15,"msg":"Remote service error"}}'),
        ("f:2", b"[1, 2"),
        ("f:3", b'{"result":{"return_code":"FAIL","return_msg":"no such store"}}'),
        ("f:4", orjson.dumps({"order_status": "PAID"})),  # an order without its key
        ("f:5", b"[]"),
    ]
    got = pool.digest_lines("wdk", lines, AT)
    assert got.orders == []
    assert [w for w, _ in got.errors] == ["f:1", "f:2", "f:3", "f:4", "f:5"]
    why = dict(got.errors)
    assert "Remote service error" in why["f:1"]
    assert why["f:2"].startswith("MalformedResponse")
    assert "no such store" in why["f:3"]
    assert "biz_order_id" in why["f:4"]


def test_omni_bodies_and_user_id() -> None:
    oid = data.omni_order_id(5)
    model = data.omni_order(oid)
    body = orjson.dumps(
        {"alibaba_omni_order_query_response": {"result": {"success": True, "model": model}}}
    )
    missing = orjson.dumps({"result": {"success": False, "msg_code": "ORDER_NOT_FOUND"}})
    got = pool.digest_lines("omni", [("o:1", body), ("o:2", missing)], AT, "3031798632")
    assert [(o.key, o.user_id) for o in got.orders] == [(oid, "3031798632")]
    (encoded,) = pool.encode_orders(got.orders)
    reference = load.encode(normalize_omni(model, AT, "3031798632"))
    assert encoded.rows == reference.rows


@pytest.mark.parametrize("i", range(5))
def test_encoded_rows_equal_the_reference_normalizer(i: int) -> None:
    order = data.wdk_order(data.FIRST_DEMO_BIZ_ID + i * 7, epoch=i, change_rate=0.5)
    order["trade_attributes"] = '{"a":1,}'  # repaired, not rejected
    got = pool.digest_lines("wdk", [("x:1", _wdk_body([order], wrapped=i % 2 == 0))], AT)
    (encoded,) = pool.encode_orders(got.orders)
    reference = load.encode(normalize_wdk(order, AT))
    assert encoded.rows == reference.rows
    assert encoded.payload_hash == reference.payload_hash
    assert encoded.raw == b""  # sent back once only: inside the archive line


def _mixed_lines() -> list[tuple[str, bytes]]:
    wdk = [data.wdk_order(data.FIRST_DEMO_BIZ_ID + i, epoch=i, change_rate=0.5) for i in range(6)]
    wdk[1]["trade_attributes"] = '{"a":1,}'  # repaired
    wdk[2]["buyer_memo"] = "tab\there, nul \x00 and a backslash \\"  # an escaped NUL in the line
    wdk[3]["pay_time"] = "the 31st of February"  # a bad field: kept in raw, NULL in its column
    wdk[4]["extra_thing"] = {"x": 1}  # an unknown field
    return [
        ("m:1", _wdk_body(wdk[:3], wrapped=True)),
        ("m:2", _wdk_body(wdk[3:], wrapped=False)),
        ("m:3", b"[1, 2"),
        ("m:4", orjson.dumps(wdk[0])),
    ]


def test_digesting_with_encode_all_gives_the_rows_of_the_two_pass_path() -> None:
    lines = _mixed_lines()
    assert b"\\u0000" in lines[0][1]
    two_pass = pool.digest_lines("wdk", lines, AT)
    one_pass = pool.digest_lines("wdk", lines, AT, None, True)
    assert not two_pass.encoded
    assert one_pass.encoded
    assert one_pass.errors == two_pass.errors
    assert len(one_pass.errors) == 1
    encoded = pool.encode_orders(two_pass.orders)
    assert len(one_pass.orders) == len(encoded) == 7
    for got, want in zip(one_pass.orders, encoded, strict=True):
        assert (got.key, got.payload_hash) == (want.key, want.payload_hash)
        assert got.rows == want.rows
        assert got.counts == want.counts
        assert (got.bad_fields, got.unknown_fields) == (want.bad_fields, want.unknown_fields)
        assert got.raw == b""
    assert any(o.bad_fields for o in encoded)
    assert any(o.unknown_fields for o in encoded)


def test_the_mix_encodes_in_one_pass_only_after_mostly_new_batches() -> None:
    from etl.loading import Mix

    mix = Mix()
    assert not mix.encode_all()  # nothing known yet: the hash check comes first
    mix.observe(700, 750)
    assert mix.encode_all()
    mix.observe(10, 750)
    assert not mix.encode_all()
    mix.observe(0, 0)  # an empty batch says nothing
    assert not mix.encode_all()


# --------------------------------------------------- a fetched answer read in the pool (sync)


def test_a_fetched_body_reads_like_a_captured_line_in_both_shapes() -> None:
    """read_wdk_body (the sync loop's answers, in the pool) gives the orders digest_lines gives
    for the same body, by the id each answers, with rows when encode_all."""
    lines = _mixed_lines()
    for _, body in lines[:2]:
        want = pool.digest_lines("wdk", [("x", body)], AT, None, True).orders
        for encode_all in (False, True):
            got = pool.read_wdk_body(body, "tb_biz_order_id", AT, encode_all)
            assert got.notes == []
            assert [f.biz for f in got.orders] == [str(o.key) for o in want]
            assert [f.echo for f in got.orders] == [
                str(data.TB_BASE + int(f.biz)) for f in got.orders
            ]
            for fetched, ref in zip(got.orders, want, strict=True):
                assert fetched.order is not None
                assert fetched.invalid is None
                assert fetched.order.payload_hash == ref.payload_hash
                assert (fetched.order.rows == ref.rows) is encode_all
                assert (fetched.order.rows is None) is not encode_all


def test_a_fetched_body_names_invalid_orders_and_says_what_is_odd_about_the_answer() -> None:
    good = data.wdk_order(data.FIRST_DEMO_BIZ_ID)
    keyless = dict(data.wdk_order(data.FIRST_DEMO_BIZ_ID + 1))
    del keyless["biz_order_id"]
    body = orjson.dumps(
        {
            "result": {
                "return_code": "SUCCESS",
                "total_number": 3,
                "orders": [good, keyless],
            },
            "request_id": "rq1",
        }
    )
    got = pool.read_wdk_body(body, "out_order_id", AT, True)
    assert [(f.echo, f.order is not None) for f in got.orders] == [
        (good["out_order_id"], True),
        (keyless["out_order_id"], False),
    ]
    assert got.orders[1].invalid
    assert got.notes == ["wdk answer says total_number=3 but carries 2 orders (request_id rq1)"]


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (
            b'{"error_response":{"code":7,"msg":"App Call Limited",'
            b'"sub_msg":"This ban will last for 3 more seconds"}}',
            errors.RateLimited,
        ),
        (b'{"error_response":{"code":25,"msg":"Invalid signature"}}', errors.SignatureError),
        (b'{"result":{"return_code":"FAIL","return_msg":"x"}}', errors.BusinessError),
        (b'{"result":{"orders":[]', errors.MalformedResponse),
        (b'{"request_id":"rq2"}', errors.MalformedResponse),
    ],
)
def test_a_fetched_body_raises_what_the_client_would(body: bytes, error: type) -> None:
    """The same classified errors as the client's own reading, across the process boundary
    (the pool pickles them): the client retries, splits or stops on them as before."""
    with pytest.raises(error) as caught:
        pool.read_wdk_body(body, "biz_order_id", AT, True)
    again = pickle.loads(pickle.dumps(caught.value))
    assert type(again) is error
    assert str(again) == str(caught.value)
    if body == b'{"request_id":"rq2"}':
        assert caught.value.request_id == "rq2"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_warming_starts_the_processes_before_any_work_and_only_once() -> None:
    """``warm()`` starts the pool's processes in the background (a command starts them while it
    reads its input); a second call starts no more; without processes it does nothing."""
    with pool.Normalizer(2) as normalizer:
        normalizer.warm()
        normalizer.warm()
        deadline = time.monotonic() + 30
        while len(normalizer.worker_pids()) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        pids = normalizer.worker_pids()
        assert len(pids) == 2
        assert all(_alive(p) for p in pids)
        got = normalizer.submit(50, pool.encode_orders, []).result(timeout=30)
        assert got == []
        assert sorted(normalizer.worker_pids()) == sorted(pids)
    assert not any(_alive(p) for p in pids)
    with pool.Normalizer(0) as in_thread:
        in_thread.warm()
        assert in_thread.executor is None
        assert in_thread.worker_pids() == []
