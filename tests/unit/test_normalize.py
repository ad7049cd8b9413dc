"""Normalization: golden rows for the four example payloads, and properties."""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from etl import chinatime
from etl.normalize.orders import InvalidOrder, content_hash, normalize_omni, normalize_wdk
from etl.simulator import data
from etl.top import apis, envelope

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"
FETCHED = datetime(2024, 1, 2, 3, 0, tzinfo=UTC)
CN = chinatime.CHINA


def _wdk_example(shape: str) -> dict[str, Any]:
    body = (EXAMPLES / f"alibaba.wdk.order.get.{shape}.json").read_bytes()
    return apis.wdk_orders(envelope.payload(body, apis.WDK_METHOD))[0]


def _omni_example(shape: str) -> dict[str, Any]:
    body = (EXAMPLES / f"alibaba.omni.order.query.{shape}.json").read_bytes()
    model = apis.omni_model(envelope.payload(body, apis.OMNI_METHOD))
    assert model is not None
    return model


WDK_PARENT = {
    "biz_order_id": 500031414182214,
    "tb_biz_order_id": 3725362658812595205,
    "out_order_id": "ele12324355",
    "store_id": "CSDRF01001",
    "shop_id": "12343561",
    "out_shop_id": "1223",
    "merchant_code": "CSSJ",
    "order_from": 3,
    "order_client": "app",
    "trd_type": 1,
    "order_status": "PAID",
    "pay_time": datetime(2024, 1, 2, 10, 11, 12, tzinfo=CN),
    "package_time": datetime(2024, 1, 2, 10, 30, tzinfo=CN),
    "original_amt": 3560,
    "discount_amt": 120,
    "member_discount_amt": 0,
    "post_fee": 0,
    "pay_amt": 3440,
    "member_card_num": "",
    "member_point": Decimal("0"),
    "operator_id": "",
    "operator_name": "",
    "gift_coupon": "",
    "duty_code": "",
    "open_uid": "AAGxxxx",
    "trade_attributes": '{"wdkMemberSource":"phoneNum"}',
    "trade_attributes_raw": '{"wdkMemberSource":"phoneNum"}',
    "unknown_fields": None,
    "fetched_at": FETCHED,
}
WDK_CHANNEL = {
    "biz_order_id": 500031414182214,
    "seq": 0,
    "order_channel": "APP|淘宝",
    "pay_amount": 3440,
    "pay_type": 11,
    "pos_no": "",
    "store_id": "CSDRF01001",
    "trd_type": 1,
    "actual_pay_amount": 3440,
    "adjust_amount": 0,
    "promotion_card_info": "",
    "pay_attributes": '{"tno":"2088102","tsn":"2024010222001"}',
    "pay_attributes_raw": '{"tno":"2088102","tsn":"2024010222001"}',
    "pmt_alipay_promotion_amt": 0,
    "pmt_alipay_reduce_amt": 0,
    "pmt_koubei_coupon_amt": 0,
    "koubei_coupon_info": "[]",
    "koubei_coupon_info_raw": "[]",
}
PROMO = '[{"activity_id":"1234","activity_name":"五一促销","activity_type":1}]'
WDK_SUB = {
    "biz_order_id": 500031414182215,
    "order_biz_order_id": 500031414182214,
    "seq": 0,
    "parent_id": 500031414182214,
    "tb_biz_order_id": 3725362658812595206,
    "out_order_id": "ele12324355",
    "store_id": "CSDRF01001",
    "trd_type": 1,
    "order_type": "COMMON",
    "order_status": "PAID",
    "item_code": 101292002,
    "sku_code": "098771",
    "out_sku_code": "123",
    "price": 1280,
    "quantity": Decimal(2),
    "sell_unit": "kg",
    "ns_quantity": Decimal("1.1"),
    "stock_unit": "kg",
    "sale_unit": "g",
    "pick_amount_stock": Decimal("1.1"),
    "buy_amount_stock": Decimal("1.1"),
    "original_amt": 2560,
    "promotion_discount_amt": 120,
    "member_discount_amt": 0,
    "share_discount_amt": 0,
    "txd_pmt_amt": 0,
    "pick_amt": 2440,
    "member_point": Decimal(5),
    "promotion_info": PROMO,
    "promotion_info_raw": PROMO,
    "status_change_time": '{"PAID":"2024-01-02 10:11:12"}',
    "status_change_time_raw": '{"PAID":"2024-01-02 10:11:12"}',
    "trade_sub_attributes": "{}",
    "trade_sub_attributes_raw": "{}",
}
OMNI_PARENT = {
    "order_id": "108717674563804955",
    "user_id": "3031798632",
    "alipay_order_id": "2018100822001100000000000001",
    "out_order_id": "12348",
    "o2o_guide_id": 3031798632,
    "o2o_guide_name": "导购小王",
    "o2o_shop_id": "105565032",
    "o2o_shop_name": "杭州西湖店",
    "item_id": 560540831441,
    "item_title": "测试宝贝请不要拍",
    "sku_id": "0",
    "sku_properties_name": "",
    "contract_price": 20000,
    "total_fee": 20000,
    "voucher_price": 1000,
    "pay_status": 8,
    "can_close": False,
    "promotion_id": 1111,
    "promotion_amount": 1000,
    "promotion_type": 0,
    "promotion_order_id": 1111,
    "promotion_buy_amount": 111,
    "unknown_fields": None,
    "fetched_at": FETCHED,
}
OMNI_SUBPAY = {
    "subpay_order_id": 968772003804955,
    "order_id": "108717674563804955",
    "seq": 0,
    "step_no": 1,
    "pay_status": 1,
    "pay_type": 2,
    "total_fee": 19000,
    "disburse_status": "1",
}
OMNI_SERIAL = {
    "order_id": "108717674563804955",
    "seq": 0,
    "pay_serial_no": "1538363939613011008096025771",
    "step_no": 1,
    "batch_no": 1,
    "paid_money": 19000,
    "pay_time": datetime(2018, 10, 8, 12, 0, tzinfo=CN),
    "sync_time": datetime(2018, 10, 8, 12, 0, 5, tzinfo=CN),
    "pay_type": 1,
    "pay_status": 1,
}


def _without_raw(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("raw", "payload_hash")}


@pytest.mark.parametrize("shape", ["default", "simplify"])
def test_wdk_example_golden_rows(shape: str) -> None:
    n = normalize_wdk(_wdk_example(shape), FETCHED)
    assert _without_raw(n.parent) == WDK_PARENT
    assert n.children["wdk_pay_channels"] == [WDK_CHANNEL]
    assert n.children["wdk_sub_orders"] == [WDK_SUB]
    assert n.bad_fields == []
    assert n.unknown_fields == []
    assert orjson.loads(n.parent["raw"])["tb_biz_order_id"] == 3725362658812595205


@pytest.mark.parametrize("shape", ["default", "simplify"])
def test_omni_example_golden_rows(shape: str) -> None:
    n = normalize_omni(_omni_example(shape), FETCHED, "3031798632")
    assert _without_raw(n.parent) == OMNI_PARENT
    assert n.children["omni_subpay_orders"] == [OMNI_SUBPAY]
    assert n.children["omni_pay_serials"] == [OMNI_SERIAL]
    assert n.bad_fields == []


def test_both_shapes_give_identical_rows_and_hash() -> None:
    a = normalize_wdk(_wdk_example("default"), FETCHED)
    b = normalize_wdk(_wdk_example("simplify"), FETCHED)
    assert a.parent == b.parent
    assert a.children == b.children
    c = normalize_omni(_omni_example("default"), FETCHED, "u")
    d = normalize_omni(_omni_example("simplify"), FETCHED, "u")
    assert c.parent == d.parent


def test_page_example_blobs_do_not_fail_the_order() -> None:
    order = _wdk_example("simplify")
    order["pay_channels"][0]["pay_attributes"] = data.BAD_PAY_ATTRIBUTES
    order["sub_orders"][0]["status_change_time"] = data.BAD_STATUS_CHANGE
    order["sub_orders"][0]["promotion_info"] = "”{broken"
    n = normalize_wdk(order, FETCHED)
    channel = n.children["wdk_pay_channels"][0]
    assert orjson.loads(channel["pay_attributes"]) == {"btn": "C001"}
    assert channel["pay_attributes_raw"] == data.BAD_PAY_ATTRIBUTES
    sub = n.children["wdk_sub_orders"][0]
    assert orjson.loads(sub["status_change_time"]) == {"PACKAGED": "2020-01-01 15:23:29"}
    assert sub["promotion_info"] is None
    assert sub["promotion_info_raw"] == "”{broken"
    assert n.bad_fields == ["sub_orders[0].promotion_info"]


def test_bad_fields_become_null_and_are_counted() -> None:
    order = _wdk_example("simplify")
    order.update(pay_amt="lots", pay_time="someday", trd_type=99999)
    order["sub_orders"][0]["ns_quantity"] = "1,5"
    n = normalize_wdk(order, FETCHED)
    assert n.parent["pay_amt"] is None
    assert n.parent["pay_time"] is None
    assert n.parent["trd_type"] is None
    assert n.children["wdk_sub_orders"][0]["ns_quantity"] is None
    assert sorted(n.bad_fields) == sorted(
        ["pay_amt", "pay_time", "trd_type", "sub_orders[0].ns_quantity"]
    )
    assert orjson.loads(n.parent["raw"])["pay_amt"] == "lots"  # kept as received


def test_numeric_strings_and_string_booleans_are_read() -> None:
    order = _wdk_example("simplify")
    order.update(
        pay_amt="3440", biz_order_id="500031414182214", tb_biz_order_id="3725362658812595205"
    )
    n = normalize_wdk(order, FETCHED)
    assert n.parent["pay_amt"] == 3440
    assert n.parent["tb_biz_order_id"] == 3725362658812595205
    model = _omni_example("simplify")
    model["can_close"] = "true"
    assert normalize_omni(model, FETCHED).parent["can_close"] is True


def test_unknown_fields_are_kept_in_raw_and_listed() -> None:
    order = _wdk_example("simplify")
    order["new_field"] = "x"
    order["sub_orders"][0]["brand_new"] = 1
    order["pay_channels"][0]["biz_order_id"] = 1  # known: the parent id, not unknown
    n = normalize_wdk(order, FETCHED)
    assert n.unknown_fields == ["new_field", "sub_orders.brand_new"]
    assert n.parent["unknown_fields"] == ["new_field", "sub_orders.brand_new"]
    assert orjson.loads(n.parent["raw"])["new_field"] == "x"


def test_emptied_and_missing_lists() -> None:
    order = _wdk_example("simplify")
    order["sub_orders"] = []
    del order["pay_channels"]
    n = normalize_wdk(order, FETCHED)
    assert n.children == {"wdk_pay_channels": [], "wdk_sub_orders": []}


def test_order_without_key_is_invalid() -> None:
    order = _wdk_example("simplify")
    order["biz_order_id"] = "abc"
    with pytest.raises(InvalidOrder, match="biz_order_id"):
        normalize_wdk(order, FETCHED)
    with pytest.raises(InvalidOrder):
        normalize_omni({"item_id": 1}, FETCHED)


def test_sub_order_without_key_is_skipped_but_counted() -> None:
    order = _wdk_example("simplify")
    order["sub_orders"].append({"item_code": 1})
    n = normalize_wdk(order, FETCHED)
    assert len(n.children["wdk_sub_orders"]) == 1
    assert "sub_orders[1].biz_order_id" in n.bad_fields


def _shuffle_keys(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffle_keys(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffle_keys(v, rnd) for v in value]
    return value


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=1, max_value=10**14), st.integers(0, 3), st.randoms())
def test_hash_and_rows_stable_across_shapes_and_key_order(biz: int, epoch: int, rnd: Any) -> None:
    order = data.wdk_order(biz, epoch=epoch)
    wrapped = _shuffle_keys(data.wrap_lists(order), rnd)
    a, b = normalize_wdk(order, FETCHED), normalize_wdk(wrapped, FETCHED)
    assert a.parent["payload_hash"] == b.parent["payload_hash"] == content_hash(wrapped)
    assert a.children == b.children
    assert _without_raw(a.parent) == _without_raw(b.parent)


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=1, max_value=10**14))
def test_hash_changes_with_content(biz: int) -> None:
    order = data.wdk_order(biz)
    changed = copy.deepcopy(order)
    changed["sub_orders"][0]["quantity"] = 999
    assert content_hash(order) != content_hash(changed)


def test_empty_list_spellings_hash_the_same() -> None:
    order = _wdk_example("simplify")
    order["pay_channels"] = []
    absent = {k: v for k, v in order.items() if k != "pay_channels"}
    wrapped_empty = dict(order, pay_channels={})
    null = dict(order, pay_channels=None)
    hashes = {content_hash(o) for o in (order, absent, wrapped_empty, null)}
    assert len(hashes) == 1


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(max_size=6),
    lambda children: (
        st.lists(children, max_size=3)
        | st.dictionaries(st.sampled_from(["a", "b", 'c"', "d\\", ",", "{"]), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.text(max_size=4), _json_values, max_size=6))
def test_text_canonical_hash_equals_the_structural_one(value: dict[str, Any]) -> None:
    from etl.normalize import orders

    assert orders._hash_simplified(value) == orders._hash_structural(value)
