"""The message service against the simulator and a real Postgres: consume / confirm in both
shapes, queueing and confirming, re-arming, skipping what the stored payload answers, latency."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl import chinatime
from etl.db import queue
from etl.pipeline import Syncer
from etl.simulator import data
from etl.simulator.server import Simulator, SimulatorConfig
from etl.simulator.tmc import TmcConfig
from etl.tmc.consumer import TmcConsumer
from etl.top import apis
from etl.top.client import TopClient
from tests.helpers import rows, settings_for

STATUS = "alibaba_wdkorder_StatusChange"
CANCEL = "alibaba_wdk_ChannelOrderCancel"
BIZ = data.FIRST_DEMO_BIZ_ID


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(SimulatorConfig(missing_rate=0.0, tmc=TmcConfig(redelivery_seconds=0.3)))
    await simulator.start()
    yield simulator
    await simulator.stop()


def content(biz: int | str) -> str:
    return orjson.dumps({"biz_order_id": biz, "order_status": "PACKAGED"}).decode()


def china(dt: datetime) -> str:
    return chinatime.now_text(dt)


@pytest.mark.parametrize("simplify", ["true", "false"])
async def test_consume_and_confirm_in_both_shapes_and_redelivery(
    sim: Simulator, simplify: str
) -> None:
    ids = [sim.tmc.publish(STATUS, content(BIZ + i)) for i in range(15)]
    async with TopClient(settings_for(sim.url, top_simplify=simplify)) as client:
        got = await apis.tmc_consume(client, "default", 10)
        assert [m["id"] for m in got] == ids[:10]
        assert got[0]["content"] == content(BIZ)
        rest = await apis.tmc_consume(client, "default", 10)
        assert [m["id"] for m in rest] == ids[10:]
        assert await apis.tmc_consume(client, "default", 10) == []
        await apis.tmc_confirm(client, "default", ids[:12])
        assert sim.tmc.unconfirmed() == 3
        await asyncio.sleep(0.4)  # past redelivery_seconds: the 3 unconfirmed come back
        again = await apis.tmc_consume(client, "default", 10)
        assert sorted(m["id"] for m in again) == ids[12:]
        await apis.tmc_confirm(client, "default", ids[12:])
    assert sim.tmc.unconfirmed() == 0
    assert sim.tmc.counters.redelivered == 3


async def test_unknown_group_and_bad_quantity_are_caller_errors(sim: Simulator) -> None:
    from etl import errors

    async with TopClient(settings_for(sim.url)) as client:
        with pytest.raises(errors.CallerError, match="Invalid Arguments"):
            await apis.tmc_consume(client, "no-such-group", 10)
        with pytest.raises(errors.CallerError):
            await client.call(apis.TMC_CONSUME_METHOD, {"quantity": 5})


async def test_pull_queues_exact_ids_counts_topics_keeps_unreadable_and_confirms_all(
    sim: Simulator, engine: Engine
) -> None:
    big = 2**53 + 1
    sim.tmc.publish(STATUS, content(big))  # a JSON number beyond 2**53
    sim.tmc.publish(CANCEL, content(str(big + 2)))  # a string
    for _ in range(3):  # one order, three messages: one queue row
        sim.tmc.publish(STATUS, content(BIZ))
    sim.tmc.publish("taobao_item_ItemStockChanged", '{"num_iid": 1}')
    sim.tmc.publish("taobao_item_ItemStockChanged", '{"num_iid": 2}')
    bad = sim.tmc.publish(STATUS, '{"biz_order_id": 50003')
    s = settings_for(sim.url, tmc_quantity=10)
    async with TopClient(s) as client:
        consumer = TmcConsumer(s, engine, client)
        stats = await consumer.drain(asyncio.Event())
    keys = rows(engine, "SELECT key, state FROM sync_queue ORDER BY key")
    assert keys == sorted([(str(big), "pending"), (str(big + 2), "pending"), (str(BIZ), "pending")])
    assert rows(engine, "SELECT topic, handled, messages FROM tmc_topics ORDER BY topic") == [
        (CANCEL, True, 1),
        (STATUS, True, 5),
        ("taobao_item_ItemStockChanged", False, 2),
    ]
    hinted = rows(engine, "SELECT messages FROM tmc_hints WHERE key = :k", k=str(BIZ))
    assert hinted == [(3,)]
    unreadable = rows(engine, "SELECT message_id, topic, content, reason FROM tmc_unreadable")
    assert unreadable == [(bad, STATUS, '{"biz_order_id": 50003', unreadable[0][3])]
    assert "not JSON" in unreadable[0][3]
    assert sim.tmc.unconfirmed() == 0
    assert stats.messages == 8
    assert stats.confirmed == 8
    assert stats.queued == 3
    assert stats.unhandled == {"taobao_item_ItemStockChanged": 2}
    assert sim.counters.by_method["alibaba.wdk.order.get"] == 0  # nothing fetched by a pull


def _freshness_count() -> float:
    from prometheus_client import REGISTRY

    return REGISTRY.get_sample_value("etl_tmc_freshness_seconds_count") or 0.0


async def _load(s: Any, engine: Engine, client: TopClient) -> Syncer:
    with engine.begin() as conn:
        run_id = int(
            conn.execute(
                sa.text("INSERT INTO sync_runs (kind) VALUES ('sync') RETURNING id")
            ).scalar_one()
        )
    syncer = Syncer(s, engine, client, run_id)
    await syncer.drain(asyncio.Event())
    return syncer


async def test_done_order_is_rearmed_unless_the_stored_fetch_is_newer(
    sim: Simulator, engine: Engine
) -> None:
    s = settings_for(sim.url, tmc_fetch_slack_seconds=2)
    keys = [str(BIZ + i) for i in range(3)]
    with engine.begin() as conn:
        queue.enqueue(conn, "wdk", "biz", keys)
    async with TopClient(s) as client:
        await _load(s, engine, client)
        assert {r[0] for r in rows(engine, "SELECT state FROM sync_queue")} == {"done"}
        fetched = rows(engine, "SELECT max(fetched_at) FROM wdk_orders")[0][0]
        old = china(fetched - timedelta(seconds=30))  # published before the stored fetch
        new = china(datetime.now(UTC) + timedelta(seconds=5))  # after it
        sim.tmc.publish(STATUS, content(int(keys[0])), pub_time=old)
        sim.tmc.publish(STATUS, content(int(keys[1])), pub_time=new)
        consumer = TmcConsumer(s, engine, client)
        stats = await consumer.drain(asyncio.Event())
        assert stats.skipped_stale == 1
        assert stats.queued == 1
        states = dict(rows(engine, "SELECT key, state FROM sync_queue"))
        assert states == {keys[0]: "done", keys[1]: "pending", keys[2]: "done"}
        calls = sim.counters.by_method["alibaba.wdk.order.get"]
        observed = _freshness_count()
        await _load(s, engine, client)
        assert sim.counters.by_method["alibaba.wdk.order.get"] == calls + 1
    assert sim.tmc.unconfirmed() == 0
    # the hint was answered by the load: one latency row, one histogram observation, no hint
    assert _freshness_count() == observed + 1
    assert rows(engine, "SELECT key FROM tmc_latency") == [(keys[1],)]
    assert rows(engine, "SELECT count(*) FROM tmc_hints") == [(0,)]
    report = rows(engine, "SELECT api, orders_loaded, p50_seconds FROM report_tmc_freshness")
    assert report[0][:2] == ("wdk", 1)


async def test_message_during_a_fetch_rearms_the_order_after_its_ack(
    sim: Simulator, engine: Engine
) -> None:
    s = settings_for(sim.url)
    key = str(BIZ + 7)
    with engine.begin() as conn:
        queue.enqueue(conn, "wdk", "biz", [key])
    async with TopClient(s) as client:
        with engine.begin() as conn:
            run_id = int(
                conn.execute(
                    sa.text("INSERT INTO sync_runs (kind) VALUES ('sync') RETURNING id")
                ).scalar_one()
            )
        syncer = Syncer(s, engine, client, run_id)
        items = await syncer._claim("wdk", 10)
        await asyncio.sleep(0.05)
        # the message is pulled while the order is leased (its fetch may predate the change)
        sim.tmc.publish(STATUS, content(int(key)))
        await TmcConsumer(s, engine, client).drain(asyncio.Event())
        assert rows(engine, "SELECT state FROM sync_queue") == [("leased",)]
        await syncer._batch("wdk", items)
        assert rows(engine, "SELECT state FROM sync_queue") == [("pending",)]
        assert rows(engine, "SELECT count(*) FROM tmc_hints") == [(1,)]
        await _load(s, engine, client)
    assert rows(engine, "SELECT state FROM sync_queue") == [("done",)]
    assert rows(engine, "SELECT count(*) FROM tmc_hints") == [(0,)]
    assert rows(engine, "SELECT count(*) FROM tmc_latency") == [(1,)]


async def test_the_stream_moves_orders_and_the_served_order_follows(sim: Simulator) -> None:
    sim.config.tmc.orders = 20
    changed = [sim.tmc.change_one() for _ in range(30)]
    moved = {b for b in changed if b is not None}
    assert moved
    async with TopClient(settings_for(sim.url)) as client:
        got = await apis.wdk_order_get(client, [str(b) for b in moved])
    for order in got.orders:
        assert order["order_status"] == sim.tmc.status[order["biz_order_id"]]
        assert order == sim.current_wdk_order(order["biz_order_id"])
    topics = set(sim.tmc.counters.by_topic)
    assert topics <= {
        STATUS,
        CANCEL,
        "alibaba_wdkopen_OrderMessage",
        "alibaba_wdk_ChannelOrderStatusChange",
        "taobao_item_ItemStockChanged",
    }
