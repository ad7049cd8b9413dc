"""End to end, the message service: real `etl` processes, a real Postgres, the simulator."""

from __future__ import annotations

import random
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import timedelta

import orjson
import psycopg
import pytest

from etl import chinatime
from etl.simulator import data
from etl.simulator.server import SimulatorConfig, SimulatorThread
from etl.simulator.tmc import TmcConfig
from tests.helpers import etl_cmd, etl_env, q

STATUS = "alibaba_wdkorder_StatusChange"
CHANNEL = "alibaba_wdk_ChannelOrderStatusChange"
CANCEL = "alibaba_wdk_ChannelOrderCancel"
OPEN = "alibaba_wdkopen_OrderMessage"
OTHER = "taobao_item_ItemStockChanged"
WDK = "alibaba.wdk.order.get"


def wait_for(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except psycopg.Error:
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def content(biz: int, as_text: bool) -> str:
    return orjson.dumps(
        {"biz_order_id": str(biz) if as_text else biz, "order_status": "PAID"}
    ).decode()


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    cfg = SimulatorConfig(missing_rate=0.0, tmc=TmcConfig(redelivery_seconds=1.0))
    with SimulatorThread(cfg) as s:
        yield s


def run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(etl_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout)


def test_pull_killed_mid_way_then_rerun_loses_nothing(db_url: str, sim: SimulatorThread) -> None:
    rng = random.Random(11)
    topics = [(STATUS, False), (OPEN, False), (CHANNEL, True), (CANCEL, True)]
    named: set[str] = set()
    for i in range(2000):
        biz = data.FIRST_DEMO_BIZ_ID + rng.randrange(1500)
        topic, as_text = rng.choice(topics)
        sim.sim.tmc.publish(topic, content(biz, as_text))
        named.add(str(biz))
        if i % 100 == 0:
            sim.sim.tmc.publish(OTHER, '{"num_iid": 1}')
    published = sim.sim.tmc.counters.published
    env = etl_env(db_url, sim.url, top_qps=30, tmc_quantity=10)
    proc = subprocess.Popen(etl_cmd("tmc", "pull"), env=env, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: sim.sim.tmc.counters.confirmed >= 300, 60, "a part to be confirmed")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
    assert sim.sim.tmc.unconfirmed() > 0  # it really died mid-way
    time.sleep(1.2)  # the messages it consumed and never confirmed come back
    env = etl_env(db_url, sim.url, top_qps=1000, tmc_quantity=200)
    done = run(env, "tmc", "pull")
    assert done.returncode == 0, done.stderr
    assert sim.sim.tmc.unconfirmed() == 0
    assert sim.sim.tmc.counters.published == published
    queued = {r[0] for r in q(db_url, "SELECT key FROM sync_queue")}
    assert queued == named
    assert (
        q(db_url, "SELECT count(*) FROM sync_queue GROUP BY api, id_kind, key HAVING count(*) > 1")
        == []
    )
    other = q(db_url, "SELECT handled, messages FROM tmc_topics WHERE topic = %s", OTHER)
    assert other[0][0] is False
    assert other[0][1] >= 20  # at least once (a killed pull's messages may be counted twice)
    assert "tmc pull ok" in done.stdout


def test_exact_big_ids_unknown_topics_unreadable_and_no_call_for_an_old_message(
    db_url: str, sim: SimulatorThread
) -> None:
    big_number, big_text = 2**53 + 1, 2**56 + 5
    tmc = sim.sim.tmc
    tmc.publish(STATUS, content(big_number, False))
    tmc.publish(CANCEL, content(big_text, True))
    tmc.publish(OTHER, '{"num_iid": 15380658823}')
    bad = tmc.publish(CHANNEL, "<xml>not json</xml>")
    env = etl_env(db_url, sim.url)
    pulled = run(env, "tmc", "pull")
    assert pulled.returncode == 0, pulled.stderr
    assert sim.counters.by_method.get(WDK, 0) == 0
    synced = run(env, "sync")
    assert synced.returncode == 0, synced.stderr
    loaded = q(
        db_url,
        "SELECT biz_order_id, etl_raw('wdk', biz_order_id::text)->>'biz_order_id' "
        "FROM wdk_orders ORDER BY 1",
    )
    assert loaded == [(big_number, str(big_number)), (big_text, str(big_text))]
    assert tmc.unconfirmed() == 0
    assert q(db_url, "SELECT message_id, content FROM tmc_unreadable") == [
        (bad, "<xml>not json</xml>")
    ]
    status = run(env, "status")
    assert status.returncode == 0, status.stderr
    assert f"TMC topic {OTHER}: 1 messages (not handled" in status.stdout
    assert "TMC unreadable messages: 1" in status.stdout
    assert "TMC freshness (wdk, last hour" in status.stdout
    listed = run(env, "tmc", "unreadable")
    assert str(bad) in listed.stdout
    # a message published before the stored fetch: confirmed, and nothing is fetched
    fetched = q(db_url, "SELECT fetched_at FROM wdk_orders WHERE biz_order_id = %s", big_number)
    old = chinatime.now_text(fetched[0][0] - timedelta(minutes=5))
    tmc.publish(STATUS, content(big_number, False), pub_time=old)
    calls = sim.counters.by_method[WDK]
    assert run(env, "tmc", "pull").returncode == 0
    assert run(env, "sync").returncode == 0
    assert sim.counters.by_method[WDK] == calls
    assert tmc.unconfirmed() == 0
    report = run(env, "report", "tmc-freshness")
    assert "report_tmc_freshness" in report.stdout


def test_pull_exit_codes_for_credentials_and_bans(db_url: str, sim: SimulatorThread) -> None:
    env = etl_env(db_url, sim.url, top_session="wrong-session")
    rejected = run(env, "tmc", "pull")
    assert rejected.returncode == 4, rejected.stderr
    assert "ETL_TOP_SESSION" in rejected.stderr
    assert "wrong-session" not in rejected.stderr + rejected.stdout
    sim.sim.tmc.publish(STATUS, content(data.FIRST_DEMO_BIZ_ID, False))
    sim.sim.ban(600, quota=True)
    banned = run(etl_env(db_url, sim.url), "tmc", "pull")
    assert banned.returncode == 3, banned.stderr
    assert q(db_url, "SELECT count(*) FROM top_bans") == [(1,)]
    assert sim.sim.tmc.unconfirmed() == 1  # nothing was confirmed or lost


def test_worker_with_tmc_keeps_the_tables_equal_to_the_simulator(db_url: str) -> None:
    n_orders = 300
    cfg = SimulatorConfig(
        missing_rate=0.05,
        qps=200,
        tmc=TmcConfig(rate=25, orders=n_orders, redelivery_seconds=2.0),
    )
    with SimulatorThread(cfg) as sim:
        env = etl_env(
            db_url,
            sim.url,
            tmc_enabled="true",
            tmc_idle_seconds=0.2,
            poll_seconds=2,
            top_qps=100,
            not_found_checks=1,
        )
        worker = subprocess.Popen(etl_cmd("worker"), env=env, stderr=subprocess.PIPE, text=True)
        try:
            time.sleep(10)  # the stream runs; orders arrive and change
            sim.sim.tmc.stop_stream()
            time.sleep(0.5)
            sim.sim.tmc.flush()
            wait_for(lambda: sim.sim.tmc.unconfirmed() == 0, 60, "every message confirmed")
            wait_for(
                lambda: (
                    q(
                        db_url,
                        "SELECT count(*) FROM sync_queue WHERE state IN ('pending', 'leased')",
                    )
                    == [(0,)]
                ),
                60,
                "the queue to drain",
            )
        finally:
            worker.send_signal(signal.SIGTERM)
            _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        moved = dict(sim.sim.tmc.status)
        assert len(moved) > 50
        stored = {
            r[0]: r[1]
            for r in q(
                db_url, "SELECT biz_order_id, etl_raw('wdk', biz_order_id::text) FROM wdk_orders"
            )
        }
        assert set(moved) <= set(stored)
        for biz, raw in stored.items():
            assert raw == sim.sim.current_wdk_order(biz), biz
        assert {biz: stored[biz]["order_status"] for biz in moved} == moved
        assert q(db_url, "SELECT count(*) FROM tmc_hints") == [(0,)]
        assert q(db_url, "SELECT count(*) FROM tmc_latency")[0][0] > 0
        details = q(db_url, "SELECT details FROM sync_runs WHERE kind = 'worker'")[0][0]
        assert details["tmc_messages"] >= sim.sim.tmc.counters.changes
