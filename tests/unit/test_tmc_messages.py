"""TMC messages (pure): the topic table, exact ids, unknown topics, unreadable contents."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from etl import chinatime
from etl.tmc import messages as m
from etl.top import envelope

BIG = 2**53 + 1  # 9007199254740993: a float would make it ...992


def raw(topic: str, content: Any, mid: Any = 7104300007405429232, **kw: Any) -> dict[str, Any]:
    text = content if isinstance(content, str) else orjson.dumps(content).decode()
    return {"id": mid, "topic": topic, "content": text, "pub_time": "2026-11-22 10:00:05", **kw}


@pytest.mark.parametrize("topic", list(m.TOPICS))
@pytest.mark.parametrize("as_text", [False, True])
def test_every_wdk_topic_names_its_order_exactly_as_number_or_string(
    topic: str, as_text: bool
) -> None:
    value = str(BIG) if as_text else BIG
    got = m.parse(raw(topic, {"biz_order_id": value, "order_status": "PAID"}))
    assert isinstance(got, m.Hint)
    assert (got.api, got.id_kind, got.key) == ("wdk", "biz", "9007199254740993")
    assert got.pub_time == chinatime.parse("2026-11-22 10:00:05")
    assert got.message_id == 7104300007405429232


def test_ids_stay_exact_through_the_gateway_body() -> None:
    # the consume answer as bytes, through the same decoder the client uses
    content = '{"biz_order_id":9223372036854775807}'
    body = orjson.dumps(
        {
            "tmc_messages_consume_response": {
                "messages": {"tmc_message": [raw("alibaba_wdkorder_StatusChange", content)]}
            }
        }
    )
    payload = envelope.payload(body, "taobao.tmc.messages.consume")
    (message,) = payload["messages"]
    got = m.parse(message)
    assert isinstance(got, m.Hint)
    assert got.key == "9223372036854775807"
    assert got.message_id == 7104300007405429232


def test_unknown_topic_is_unhandled_not_fetched() -> None:
    got = m.parse(raw("taobao_item_ItemStockChanged", {"num_iid": 15380658823}))
    assert got == m.Unhandled(7104300007405429232, "taobao_item_ItemStockChanged")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        ('{"biz_order_id": 5000', "not JSON"),
        ("<xml><biz_order_id>1</biz_order_id></xml>", "not JSON"),
        ("[1, 2]", "not an object"),
        ('{"order_status": "PAID"}', "has no biz_order_id"),
        ('{"biz_order_id": 1.5e18}', "not a positive 64-bit integer"),
        ('{"biz_order_id": "12a"}', "not a positive 64-bit integer"),
        ('{"biz_order_id": -3}', "not a positive 64-bit integer"),
        ('{"biz_order_id": true}', "not a positive 64-bit integer"),
        ('{"biz_order_id": 9223372036854775808}', "64-bit"),
    ],
)
def test_unreadable_content_says_why_and_keeps_the_text(content: str, why: str) -> None:
    got = m.parse(raw("alibaba_wdkorder_StatusChange", content))
    assert isinstance(got, m.Unreadable)
    assert why in got.reason
    assert got.content == content
    assert got.message_id == 7104300007405429232


def test_bad_pub_time_or_missing_id_is_unreadable() -> None:
    got = m.parse(raw("alibaba_wdkorder_StatusChange", {"biz_order_id": 1}, pub_time="yesterday"))
    assert isinstance(got, m.Unreadable)
    assert "pub_time" in got.reason
    got = m.parse(raw("alibaba_wdkorder_StatusChange", {"biz_order_id": 1}, mid=1.5))
    assert isinstance(got, m.Unreadable)
    assert got.message_id is None


def test_message_id_as_string_is_exact() -> None:
    got = m.parse(
        raw("alibaba_wdkorder_StatusChange", {"biz_order_id": 1}, mid="7104300007405429233")
    )
    assert got.message_id == 7104300007405429233


def test_sort_out_merges_one_order_and_confirms_every_message_once() -> None:
    topic = "alibaba_wdkorder_StatusChange"
    batch = m.sort_out(
        [
            raw(topic, {"biz_order_id": 7}, mid=1, pub_time="2026-11-22 10:00:09"),
            raw("alibaba_wdk_ChannelOrderCancel", {"biz_order_id": "7"}, mid=2),
            raw(topic, {"biz_order_id": 7}, mid=2),  # the same message delivered twice
            raw(topic, {"biz_order_id": 8}, mid=3),
            raw("taobao_item_ItemStockChanged", {}, mid=4),
            raw("taobao_item_ItemStockChanged", {}, mid=5),
            raw(topic, "garbage", mid=6),
        ]
    )
    assert batch.messages == 7
    assert batch.confirm == [1, 2, 3, 4, 5, 6]
    assert set(batch.hints) == {("wdk", "biz", "7"), ("wdk", "biz", "8")}
    assert batch.hints[("wdk", "biz", "7")] == (
        chinatime.parse("2026-11-22 10:00:05"),
        chinatime.parse("2026-11-22 10:00:09"),
        3,
    )
    assert batch.unhandled == {"taobao_item_ItemStockChanged": 2}
    assert [u.message_id for u in batch.unreadable] == [6]
    assert batch.handled == {topic: 3, "alibaba_wdk_ChannelOrderCancel": 1}


def test_a_new_topic_is_one_line_of_the_table() -> None:
    topics = {**m.TOPICS, "x_new": m.Topic("x_new", "wdk", "biz", "order_id")}
    got = m.parse(raw("x_new", {"order_id": "42"}), topics)
    assert isinstance(got, m.Hint)
    assert got.key == "42"


def test_consume_and_confirm_requests() -> None:
    from etl.top import apis

    assert apis.tmc_consume_request("g1", 200) == {"group_name": "g1", "quantity": 200}
    req = apis.tmc_confirm_request("g1", [7104300007405429232, 1])
    assert req["s_message_ids"] == "7104300007405429232,1"
    with pytest.raises(ValueError, match="at most 200"):
        apis.tmc_confirm_request("g1", list(range(1, 202)))
    assert apis.tmc_messages({}) == []
    assert apis.tmc_messages({"messages": {}}) == []


def test_the_message_module_imports_no_io_library() -> None:
    import subprocess
    import sys

    code = (
        "import sys, etl.tmc.messages; "
        "bad = [m for m in ('aiohttp', 'sqlalchemy', 'psycopg') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@pytest.mark.parametrize(
    ("name", "value"),
    [("TMC_QUANTITY", "5"), ("TMC_QUANTITY", "201"), ("TMC_IDLE_SECONDS", "0.05")],
)
def test_tmc_settings_are_bounded_and_named(name: str, value: str) -> None:
    from etl import errors
    from etl.settings import load_settings

    with pytest.raises(errors.ConfigError, match=f"ETL_{name}='{value}'"):
        load_settings(env={"ETL_CONFIG": "", f"ETL_{name}": value})
    s = load_settings(env={"ETL_CONFIG": "", "ETL_TMC_QUANTITY": "200"})
    assert s.tmc_quantity == 200
