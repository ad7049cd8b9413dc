"""Envelope parsing and error classification (pure)."""

from __future__ import annotations

import json
from pathlib import Path

import orjson
import pytest

from etl import errors
from etl.simulator import data
from etl.top import apis, envelope

EXAMPLES = Path(__file__).resolve().parents[1] / "data" / "examples"


def _example(name: str) -> bytes:
    return (EXAMPLES / name).read_bytes()


def test_both_wdk_shapes_give_the_same_payload() -> None:
    default = envelope.payload(_example("alibaba.wdk.order.get.default.json"), apis.WDK_METHOD)
    simple = envelope.payload(_example("alibaba.wdk.order.get.simplify.json"), apis.WDK_METHOD)
    assert default == simple
    orders = apis.wdk_orders(default)
    assert len(orders) == 1
    assert orders[0]["tb_biz_order_id"] == 3725362658812595205  # exact, never a float
    assert isinstance(orders[0]["pay_channels"], list)
    assert orders[0]["sub_orders"][0]["tb_biz_order_id"] == 3725362658812595206
    assert default["request_id"] == "15rxbd3y0b3iq"


def test_both_omni_shapes_give_the_same_model() -> None:
    default = envelope.payload(_example("alibaba.omni.order.query.default.json"), apis.OMNI_METHOD)
    simple = envelope.payload(_example("alibaba.omni.order.query.simplify.json"), apis.OMNI_METHOD)
    assert default == simple
    model = apis.omni_model(default)
    assert model is not None
    assert model["order_id"] == "108717674563804955"
    assert model["subpay_order_list"][0]["subpay_order_id"] == 968772003804955
    assert model["promotion_info"]["promotion_id"] == 1111


@pytest.mark.parametrize("empty", [{}, None, {"order": None}, {"order": []}])
def test_empty_lists_in_every_spelling(empty: object) -> None:
    body = {
        "alibaba_wdk_order_get_response": {
            "result": {"orders": empty, "return_code": "success", "total_number": 0}
        }
    }
    payload = envelope.payload(orjson.dumps(body), apis.WDK_METHOD)
    assert apis.wdk_orders(payload) == []


def test_missing_list_is_empty_and_single_object_is_a_list() -> None:
    order = {"biz_order_id": 1, "pay_channels": {"pay_channel": {"pay_amount": 5}}}
    out = envelope.unwrap_lists({"orders": {"order": [order]}})
    assert out["orders"][0]["pay_channels"] == [{"pay_amount": 5}]
    assert "sub_orders" not in out["orders"][0]


def test_simulator_wrap_is_the_inverse_of_unwrap() -> None:
    order = data.wdk_order(data.FIRST_DEMO_BIZ_ID)
    assert envelope.unwrap_lists(data.wrap_lists(order)) == order


def test_raw_control_characters_are_accepted() -> None:
    body = (
        b'{"result":{"orders":[{"biz_order_id":1,"duty_code":"a\x07b\x1f"}],'
        b'"return_code":"SUCCESS"}}'
    )
    orders = apis.wdk_orders(envelope.payload(body, apis.WDK_METHOD))
    assert orders[0]["duty_code"] == "a\x07b\x1f"


def test_big_ids_stay_exact_through_the_fallback_decoder() -> None:
    body = (
        b'{"result":{"orders":[{"biz_order_id":9223372036854775807,"x":"\x01"}],'
        b'"return_code":"SUCCESS"}}'
    )
    orders = apis.wdk_orders(envelope.payload(body, apis.WDK_METHOD))
    assert orders[0]["biz_order_id"] == 2**63 - 1


@pytest.mark.parametrize("body", [b"", b"<html>502</html>", b'{"result": {"orders": [', b"[1,2]"])
def test_junk_bodies_are_malformed_and_retryable(body: bytes) -> None:
    with pytest.raises(errors.MalformedResponse) as info:
        envelope.payload(body, apis.WDK_METHOD)
    assert info.value.retryable


def test_result_as_a_list_is_accepted() -> None:
    payload = {"result": [{"orders": [{"biz_order_id": 1}], "return_code": "SUCCESS"}]}
    assert apis.wdk_orders(payload) == [{"biz_order_id": 1}]


def test_return_code_failure_is_a_business_error() -> None:
    payload = {
        "result": {"return_code": "PARAM_ERROR", "return_msg": "参数错误"},
        "request_id": "r1",
    }
    with pytest.raises(errors.BusinessError) as info:
        apis.wdk_orders(payload)
    assert info.value.request_id == "r1"
    assert "参数错误" in str(info.value)
    assert not info.value.retryable


def test_omni_success_false_stores_nothing_even_with_a_model() -> None:
    doc = json.loads(_example("alibaba.omni.order.query.simplify.json"))
    doc["result"].update(
        success=False,
        msg_code="daogoubao.order-query-parameter-error",
        msg_info="必选输入参数不能为空",
    )
    with pytest.raises(errors.BusinessError, match="order-query-parameter-error"):
        apis.omni_model(doc)


def test_omni_not_found_is_none() -> None:
    doc = {"result": {"success": False, "msg_code": "daogoubao.order-not-exist"}}
    assert apis.omni_model(doc) is None
    assert apis.omni_model({"result": {"success": "true", "model": None}}) is None


@pytest.mark.parametrize(
    ("error", "cls"),
    [
        (
            {
                "code": 7,
                "msg": "App Call Limited",
                "sub_msg": "This ban will last for 12 more seconds",
            },
            errors.RateLimited,
        ),
        ({"code": 15, "sub_code": "accesscontrol.limited-by-app-access-count"}, errors.RateLimited),
        ({"code": 15, "sub_code": "isv.access-limited-by-ip"}, errors.RateLimited),
        ({"code": 10, "msg": "Service currently unavailable"}, errors.PlatformTransient),
        ({"code": 15, "sub_code": "isp.top-remote-connection-timeout"}, errors.PlatformTransient),
        ({"code": 50, "sub_code": "isv.trade-service-rejection"}, errors.PlatformTransient),
        ({"code": 15, "sub_code": "isp.some-new-remote-thing"}, errors.PlatformTransient),
        ({"code": 31}, errors.ClockSkew),
        ({"code": 27, "msg": "Invalid session"}, errors.AuthError),
        ({"code": 15, "sub_code": "isv.session-expired"}, errors.AuthError),
        ({"code": 25, "msg": "Invalid Signature"}, errors.SignatureError),
        ({"code": 41, "sub_code": "isv.invalid-parameter"}, errors.CallerError),
        ({"code": 15, "sub_code": "isp.top-mapping-parse-error"}, errors.CallerError),
        ({"code": 50, "sub_code": "isv.invalid-parameter"}, errors.CallerError),
        ({"code": 29, "msg": "Invalid app Key"}, errors.AppKeyError),
        ({"code": 28}, errors.AppKeyError),
        ({"code": 11, "msg": "Insufficient isv permissions"}, errors.PermissionDenied),
        ({"code": 15, "sub_code": "isv.permission-api-package-limit"}, errors.PermissionDenied),
        ({"code": 26, "msg": "Missing session"}, errors.AuthError),
        ({"code": 15, "sub_code": "isv.invalid-signature"}, errors.SignatureError),
        ({"code": 13}, errors.CallerError),
    ],
)
def test_classification(error: dict[str, object], cls: type[errors.TopError]) -> None:
    body = orjson.dumps({"error_response": {**error, "request_id": "rid42"}})
    with pytest.raises(cls) as info:
        envelope.payload(body, apis.WDK_METHOD)
    assert type(info.value) is cls
    assert info.value.request_id == "rid42"
    assert "rid42" in str(info.value)


def test_ban_seconds_are_read_from_sub_msg() -> None:
    err = envelope.classify({"code": 7, "sub_msg": "This ban will last for 37 more seconds"})
    assert isinstance(err, errors.RateLimited)
    assert err.retry_after == 37.0
    assert envelope.ban_seconds("nothing here") is None


def test_ban_seconds_in_the_gateways_own_spelling() -> None:
    # "<sub_code>, will last N more seconds": no "This ban", no "for" (TOP_PROTOCOL §4).
    err = envelope.classify(
        {
            "code": 7,
            "sub_code": "accesscontrol.limited-by-app-api-access-count",
            "sub_msg": "accesscontrol.limited-by-app-api-access-count, will last 90 more seconds",
        }
    )
    assert isinstance(err, errors.RateLimited)
    assert err.retry_after == 90.0


def test_a_daily_quota_ban_without_a_wait_lasts_until_midnight_china_time() -> None:
    from datetime import datetime

    from etl import chinatime

    err = envelope.classify(
        {
            "code": 7,
            "msg": "App Call Limited",
            "sub_code": "accesscontrol.limited-by-app-access-count",
            "sub_msg": "应用调用次数超限",
        }
    )
    assert isinstance(err, errors.RateLimited)
    expected = chinatime.seconds_to_midnight()
    assert abs(err.retry_after - expected) < 5
    assert err.retry_after > 1.0 or expected < 5
    noon = datetime(2026, 11, 22, 12, 0, tzinfo=chinatime.CHINA)
    assert chinatime.seconds_to_midnight(noon) == 12 * 3600
    # A per-second ban that names no wait is still a short one.
    short = envelope.classify({"code": 7, "sub_code": "accesscontrol.limited-by-api-access-count"})
    assert isinstance(short, errors.RateLimited)
    assert short.retry_after == 1.0


def test_retryable_flags() -> None:
    assert errors.TransportError().retryable
    assert errors.PlatformTransient().retryable
    assert not errors.CallerError().retryable
    assert not errors.AuthError().retryable
    assert not errors.SignatureError().retryable
    for cls in (errors.AuthError, errors.SignatureError, errors.AppKeyError):
        assert issubclass(cls, errors.CredentialsRejected)
        assert not issubclass(cls, errors.CallerError)  # never split a batch over it
    assert "ETL_TOP_APP_SECRET" in errors.SignatureError("Invalid Signature").hint()
    assert "ETL_TOP_SESSION" in errors.AuthError("Invalid session").hint()
    assert "ETL_TOP_APP_KEY" in errors.AppKeyError("Invalid app Key").hint()


def test_simplified_orders_are_not_copied_and_wrapped_ones_are() -> None:
    order = data.wdk_order(data.FIRST_DEMO_BIZ_ID)
    assert envelope.is_simplified(order)
    assert envelope.unwrap_lists(order) is order
    wrapped = data.wrap_lists(order)
    assert not envelope.is_simplified(wrapped)
    assert not envelope.is_simplified({"x": {"orders": {}}})  # a wrapper nested anywhere
    assert envelope.unwrap_lists(wrapped) == order


def test_a_total_number_that_disagrees_with_the_orders_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    payload = {
        "result": {"return_code": "SUCCESS", "total_number": 3, "orders": [{"biz_order_id": 1}]},
        "request_id": "rid7",
    }
    with caplog.at_level("WARNING", logger="etl.top.apis"):
        assert apis.wdk_orders(payload) == [{"biz_order_id": 1}]
    assert "total_number=3 but carries 1 orders" in caplog.text


@pytest.mark.parametrize(
    "payload",
    [
        {"request_id": "x"},
        {"result": None, "request_id": "x"},
        {"result": [], "request_id": "x"},
        {"result": {"orders": []}, "request_id": "x"},
    ],
)
def test_a_successful_envelope_without_a_result_is_malformed_not_empty(
    payload: dict[str, object],
) -> None:
    with pytest.raises(errors.MalformedResponse) as info:
        apis.wdk_orders(payload)
    assert info.value.retryable
    assert info.value.request_id == "x"
    assert "answer starts" in str(info.value)


def test_omni_without_success_is_malformed() -> None:
    with pytest.raises(errors.MalformedResponse):
        apis.omni_model({"result": {"model": {"order_id": "1"}}})


@pytest.mark.parametrize(
    "body",
    [
        b'{"result":{"orders":{"order":[]}}}',
        b'{"result":{"orders" : null}}',
        b'{"result":{"orders":[{"biz_order_id":1,"sub_orders":{"sub_order":[{"x":1}]}}]}}',
        b'{"result":{"orders":[{"pay_channels":\n {}}]}}',
    ],
)
def test_wrapping_anywhere_in_the_text_is_seen(body: bytes) -> None:
    assert envelope.has_wrapping(body)
    assert envelope.has_wrapping(orjson.dumps(envelope.unwrap_lists(orjson.loads(body)))) is False


def test_a_simplified_body_is_not_walked_and_a_quoted_wrapping_is_not_taken_for_one() -> None:
    order = data.wdk_order(data.FIRST_DEMO_BIZ_ID)
    order["buyer_memo"] = 'copied: "orders":{"order":[]} and "sub_orders": null'
    body = orjson.dumps({"result": {"return_code": "SUCCESS", "orders": [order]}})
    assert not envelope.has_wrapping(body)  # in a string, every '"' is escaped
    payload = envelope.payload(body, apis.WDK_METHOD)
    assert payload["result"]["orders"][0] == order
    wrapped = orjson.dumps({"result": {"return_code": "SUCCESS", "orders": {"order": [order]}}})
    assert envelope.payload(wrapped, apis.WDK_METHOD) == payload
