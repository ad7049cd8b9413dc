"""A backfill's drain runs while its ids are still being queued (etl.intake.feed): it fetches
each chunk once committed, and does not end while more ids are on their way."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl import intake
from etl.db import backfills, queue
from etl.handoff import Hand
from etl.pipeline import Syncer
from etl.simulator import data
from etl.simulator.server import Simulator, SimulatorConfig
from etl.top.client import TopClient
from tests.helpers import rows, settings_for

N, CHUNK = 600, 100


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(SimulatorConfig(missing_rate=0.0))
    await simulator.start()
    yield simulator
    await simulator.stop()


async def test_the_drain_fetches_while_the_ids_are_queued_and_waits_for_the_last(
    sim: Simulator, engine: Engine
) -> None:
    s = settings_for(sim.url, batch_size=20, claim_size=40)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(N)]
    with intake.read_ids("wdk", "biz", keys, "ids.txt") as spooled:
        with engine.begin() as conn:
            backfill_id, resumed, since = backfills.begin(
                conn, "wdk", "biz", "ids.txt", spooled.intake.fingerprint, spooled.intake.ids
            )
        assert not resumed

        def slowly() -> bool:  # a slow feed: the drain runs dry between chunks
            time.sleep(0.5)
            return False

        feeding = asyncio.ensure_future(
            asyncio.to_thread(
                intake.feed,
                engine,
                backfill_id,
                "wdk",
                "biz",
                spooled,
                since=since,
                stopped=slowly,
                chunk_size=CHUNK,
            )
        )
        run_id = rows(engine, "INSERT INTO sync_runs (kind) VALUES ('backfill') RETURNING id")[0][0]
        async with TopClient(s) as client:
            syncer = Syncer(s, engine, client, run_id, backfill=backfill_id)
            result = await syncer.drain(asyncio.Event(), feeding=feeding)
        fed = await feeding
    assert (fed.complete, fed.added, fed.finished) == (True, N, 0)
    assert result.counters.ids_claimed == N  # one drain, though it ran dry five times
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", N)]
    assert rows(engine, "SELECT count(*) FROM wdk_orders") == [(N,)]
    # the first ids were fetched before the last were queued
    (first_done, last_queued), *_ = rows(
        engine, "SELECT min(done_at), max(enqueued_at) FROM sync_queue"
    )
    assert first_done < last_queued
    assert rows(engine, "SELECT ids FROM backfills") == [(N,)]


async def test_ids_queued_just_after_the_last_empty_claim_are_still_fetched(
    sim: Simulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeding ends between a lane's last (empty) claim and its decision to leave: the lane
    claims once more rather than leaving the last ids queued (here with no retries to wait for,
    the case where nothing else would bring it back)."""
    s = settings_for(sim.url, batch_size=20, claim_size=40, lanes=1)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(40)]
    loop = asyncio.get_running_loop()
    feeding: asyncio.Future[None] = loop.create_future()
    real_claim = queue.claim

    def claim(*args: Any, **kwargs: Any) -> list[queue.Item]:
        items = real_claim(*args, **kwargs)
        if not items and not feeding.done():  # the last chunk lands right after this claim
            with engine.begin() as conn:
                queue.enqueue(conn, "wdk", "biz", keys)
            loop.call_soon_threadsafe(feeding.set_result, None)
        return items

    monkeypatch.setattr(queue, "claim", claim)
    run_id = rows(engine, "INSERT INTO sync_runs (kind) VALUES ('backfill') RETURNING id")[0][0]
    async with TopClient(s) as client:
        syncer = Syncer(s, engine, client, run_id)
        result = await syncer.drain(asyncio.Event(), feeding=feeding, wait_for_retries=0)
    assert feeding.done()
    assert result.counters.ids_claimed == 40
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", 40)]


@pytest.mark.parametrize("fed", [True, False], ids=["backfill-feeding", "queued-elsewhere"])
async def test_lanes_that_find_nothing_stay_and_work_the_ids_queued_meanwhile_side_by_side(
    engine: Engine, monkeypatch: pytest.MonkeyPatch, fed: bool
) -> None:
    """One batch is due, so three of four lanes find nothing; 400 more ids are queued right
    after — by the backfill's own feed (``fed``), or by another process during a worker's drain.
    Those ids are worked by every lane at once, not by the one lane that happened to have a
    batch: a lane that left would not come back before the others had done every id (the
    drain's pass ends only when all its lanes do). Waiting lanes claim again when the feed moves
    on, or when another lane's claim comes back full; the drain still ends once all find
    nothing."""
    simulator = Simulator(SimulatorConfig(missing_rate=0.0, latency_ms=50))
    await simulator.start()
    s = settings_for(simulator.url, batch_size=20, claim_size=20, lanes=4)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(420)]
    with engine.begin() as conn:
        queue.enqueue(conn, "wdk", "biz", keys[:20])
    loop = asyncio.get_running_loop()
    queued_more: asyncio.Future[None] = loop.create_future()
    real_claim, real_batch = queue.claim, Syncer._batch

    def claim(*args: Any, **kwargs: Any) -> list[queue.Item]:
        items = real_claim(*args, **kwargs)
        if not items and not queued_more.done():  # the rest lands right after the first empty claim
            with engine.begin() as conn:
                queue.enqueue(conn, "wdk", "biz", keys[20:])
            loop.call_soon_threadsafe(queued_more.set_result, None)
        return items

    in_flight, peak = 0, 0

    async def batch(self: Syncer, api: str, items: list[queue.Item]) -> None:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            await real_batch(self, api, items)
        finally:
            in_flight -= 1

    monkeypatch.setattr(queue, "claim", claim)
    monkeypatch.setattr(Syncer, "_batch", batch)
    run_id = rows(engine, "INSERT INTO sync_runs (kind) VALUES ('backfill') RETURNING id")[0][0]
    try:
        async with TopClient(s) as client:
            drain = Syncer(s, engine, client, run_id).drain(
                asyncio.Event(), feeding=queued_more if fed else None
            )
            result = await asyncio.wait_for(drain, timeout=60)
    finally:
        await simulator.stop()
    assert result.counters.ids_claimed == 420
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", 420)]
    assert peak == 4  # lanes that left at their first empty claim: 1 (the one with the batch)


# ------------------------------------------------------------------- the hand-off (etl.handoff)


async def _backfill_with_hand(
    engine: Engine,
    s: Any,
    keys: list[str],
    monkeypatch: pytest.MonkeyPatch,
    window: int,
    chunk_size: int = CHUNK,
) -> tuple[Any, intake.Fed, Hand, list[int], int]:
    """Feed ``keys`` through a hand while a drain works them; returns (the drain's result, what
    was fed, the hand, the number of items waiting in the hand after each put, the number of
    ids the drain claimed from the table)."""
    real_claim, real_put = queue.claim, Hand.put
    claimed_from_table = 0
    waiting_after_put: list[int] = []

    def claim(*args: Any, **kwargs: Any) -> list[queue.Item]:
        nonlocal claimed_from_table
        items = real_claim(*args, **kwargs)
        claimed_from_table += len(items)
        return items

    def put(self: Hand, items: list[queue.Item]) -> bool:
        ok = real_put(self, items)
        waiting_after_put.append(self.waiting())
        return ok

    monkeypatch.setattr(queue, "claim", claim)
    monkeypatch.setattr(Hand, "put", put)
    hand = Hand(window)
    with intake.read_ids("wdk", "biz", keys, "ids.txt") as spooled:
        with engine.begin() as conn:
            backfill_id, _, since = backfills.begin(
                conn, "wdk", "biz", "ids.txt", spooled.intake.fingerprint, spooled.intake.ids
            )
        feeding = asyncio.ensure_future(
            asyncio.to_thread(
                intake.feed,
                engine,
                backfill_id,
                "wdk",
                "biz",
                spooled,
                since=since,
                chunk_size=chunk_size,
                hand=hand,
            )
        )
        run_id = rows(engine, "INSERT INTO sync_runs (kind) VALUES ('backfill') RETURNING id")[0][0]
        async with TopClient(s) as client:
            syncer = Syncer(s, engine, client, run_id, backfill=backfill_id, hand=hand)
            result = await asyncio.wait_for(syncer.drain(asyncio.Event(), feeding=feeding), 60)
        fed = await feeding
    return result, fed, hand, waiting_after_put, claimed_from_table


async def test_a_backfill_fetches_the_ids_it_queued_without_claiming_them_again(
    sim: Simulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder leases the ids it adds to the drain as it queues them and hands them over: no
    claim statement takes them from the table, and the feeder runs at most one chunk past its
    window ahead of the lanes."""
    s = settings_for(sim.url, batch_size=20, claim_size=40)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(N)]
    result, fed, hand, waiting, from_table = await _backfill_with_hand(
        engine, s, keys, monkeypatch, window=150
    )
    assert (fed.complete, fed.added, fed.finished) == (True, N, 0)
    assert hand.handed == N
    assert from_table == 0  # every id came through the hand
    assert result.counters.ids_claimed == N
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", N)]
    assert rows(engine, "SELECT count(*) FROM wdk_orders") == [(N,)]
    assert max(waiting) <= 150 + CHUNK  # bounded: the feeder waited for the lanes
    assert rows(engine, "SELECT ids FROM backfills") == [(N,)]
    # the leases were this run's, as a claim's are
    assert rows(engine, "SELECT count(DISTINCT run_id) FROM sync_queue") == [(1,)]


async def test_ids_queued_before_the_backfill_are_claimed_the_new_ones_handed_over(
    sim: Simulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    s = settings_for(sim.url, batch_size=20, claim_size=40)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(N)]
    with engine.begin() as conn:  # every other id queued already (a message, a worker's, ...)
        queue.enqueue(conn, "wdk", "biz", keys[::2], priority=queue.PRIORITY_BULK)
    result, fed, hand, _, from_table = await _backfill_with_hand(
        engine, s, keys, monkeypatch, window=1_000
    )
    assert fed.complete
    assert (hand.handed, from_table) == (N // 2, N // 2)
    assert result.counters.ids_claimed == N
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", N)]
    assert rows(engine, "SELECT count(*) FROM wdk_orders") == [(N,)]


async def test_a_handed_id_that_waited_past_half_its_lease_is_leased_again_unless_reclaimed(
    sim: Simulator, engine: Engine
) -> None:
    s = settings_for(sim.url, batch_size=20, claim_size=40, lease_seconds=60)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(3)]
    run_id = rows(engine, "INSERT INTO sync_runs (kind) VALUES ('backfill') RETURNING id")[0][0]
    now = [1_000.0]
    hand = Hand(100, clock=lambda: now[0])
    async with TopClient(s) as client:
        syncer = Syncer(s, engine, client, run_id, hand=hand)
        assert hand.lease is not None
        assert hand.lease.worker == syncer.worker
        with engine.begin() as conn:
            items = queue.enqueue_leased(conn, "wdk", "biz", keys, hand.lease)
            # the first one's lease ran out and another process took it meanwhile
            conn.execute(
                sa.text("UPDATE sync_queue SET leased_by = 'other#1' WHERE key = :k"),
                {"k": keys[0]},
            )
        hand.put(items)
        before = dict(rows(engine, "SELECT key, leased_until FROM sync_queue"))
        now[0] += 31  # more than half the lease (60 s) later
        taken = await syncer._claim("wdk", 40)
    assert [i.key for i in taken] == keys[1:]  # the reclaimed one is not fetched twice
    after = dict(rows(engine, "SELECT key, leased_until FROM sync_queue"))
    assert after[keys[0]] == before[keys[0]]
    assert all(after[k] > before[k] for k in keys[1:])  # leased again
    assert hand.waiting() == 0


async def test_beside_another_process_on_the_quota_the_ids_are_queued_for_everyone(
    sim: Simulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another holder of the app key's quota (a worker), the feeder leases nothing to the
    backfill: its ids are queued pending, for every process to claim, as without a hand."""
    s = settings_for(sim.url, batch_size=20, claim_size=40)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(N)]
    monkeypatch.setattr(Syncer, "_alone", lambda self: False)
    result, fed, hand, _, from_table = await _backfill_with_hand(
        engine, s, keys, monkeypatch, window=150
    )
    assert fed.complete
    assert (hand.handed, from_table) == (0, N)
    assert result.counters.ids_claimed == N
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", N)]


async def test_ids_waiting_in_the_hand_go_back_to_the_queue_once_another_process_shares(
    sim: Simulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A worker starts during a lone backfill: the ids still waiting in the hand are given back
    (pending, for every process) and the rest is queued for everyone; none is fetched twice."""
    s = settings_for(sim.url, batch_size=20, claim_size=40)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(N)]
    monkeypatch.setattr(Syncer, "_alone", lambda self: self.hand.handed < 200)
    real_release = queue.release
    given_back: list[int] = []

    def release(conn: Any, items: Any, *args: Any, **kwargs: Any) -> int:
        given_back.append(len(items))
        return real_release(conn, items, *args, **kwargs)

    monkeypatch.setattr(queue, "release", release)
    result, fed, hand, _, from_table = await _backfill_with_hand(
        engine, s, keys, monkeypatch, window=150
    )
    assert fed.complete
    assert hand.handed == 200  # two chunks of 100 leased while alone, none after
    assert sum(given_back) > 0  # some were still waiting when the other process came
    assert from_table == N - 200 + sum(given_back)
    assert result.counters.ids_claimed == N  # each id fetched once
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", N)]
    assert rows(engine, "SELECT count(*) FROM wdk_orders") == [(N,)]
