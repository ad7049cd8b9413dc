"""The pure steps the normalizer processes run: digesting captured lines, encoding rows."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

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
