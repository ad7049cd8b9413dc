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
    """Feed ``keys`` through a hand while a drain works them, then give back and seal as `etl
    backfill` does; returns (the drain's result, what was fed, the hand, the number of ids
    waiting in the hand after each put, the number of ids the drain claimed from the table)."""
    real_claim, real_put = queue.claim, Hand.put
    claimed_from_table = 0
    waiting_after_put: list[int] = []

    def claim(*args: Any, **kwargs: Any) -> list[queue.Item]:
        nonlocal claimed_from_table
        items = real_claim(*args, **kwargs)
        claimed_from_table += len(items)
        return items

    def put(self: Hand, api: str, id_kind: str, keys: list[str]) -> bool:
        ok = real_put(self, api, id_kind, keys)
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
        intake.give_back(engine, backfill_id, hand, seal=fed.complete)
    return result, fed, hand, waiting_after_put, claimed_from_table


def _count_queue_writes(engine: Engine) -> None:
    """A trigger counting the INSERTs and UPDATEs of sync_queue rows in ``queue_writes``."""
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE queue_writes (op text, n bigint)"))
        conn.execute(
            sa.text(
                "CREATE FUNCTION count_queue_write() RETURNS trigger LANGUAGE plpgsql AS $$ "
                "BEGIN INSERT INTO queue_writes VALUES (TG_OP, 1); RETURN NULL; END $$"
            )
        )
        conn.execute(
            sa.text(
                "CREATE TRIGGER count_queue_write AFTER INSERT OR UPDATE ON sync_queue "
                "FOR EACH ROW EXECUTE FUNCTION count_queue_write()"
            )
        )


def _queue_writes(engine: Engine) -> dict[str, int]:
    return dict(rows(engine, "SELECT op, sum(n)::int FROM queue_writes GROUP BY op"))


async def test_a_lone_backfill_writes_the_row_of_each_new_id_once_with_its_outcome(
    sim: Simulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The feeder hands the ids that have no queue row over to the drain unqueued: no claim
    takes them from the table, each one's row is inserted once, already done, by the
    transaction that loads its order (no leased row first, no update), and the feeder runs at
    most one chunk past its window ahead of the lanes."""
    _count_queue_writes(engine)
    s = settings_for(sim.url, batch_size=20, claim_size=40)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(N)]
    result, fed, hand, waiting, from_table = await _backfill_with_hand(
        engine, s, keys, monkeypatch, window=150
    )
    assert (fed.complete, fed.added, fed.finished) == (True, N, 0)
    assert hand.handed == N
    assert from_table == 0  # every id came through the hand
    assert result.counters.ids_claimed == N
    assert _queue_writes(engine) == {"INSERT": N}  # one write an id: no UPDATE at all
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", N)]
    assert rows(engine, "SELECT count(*) FROM wdk_orders") == [(N,)]
    assert max(waiting) <= 150 + CHUNK  # bounded: the feeder waited for the lanes
    # every row is part of the backfill, which is sealed with all of them
    assert rows(engine, "SELECT count(*) FROM backfill_ids") == [(N,)]
    assert rows(engine, "SELECT ids FROM backfills") == [(N,)]
    # written by this run, as an ack's are
    assert rows(engine, "SELECT count(DISTINCT run_id) FROM sync_queue") == [(1,)]
    assert rows(engine, "SELECT count(*) FROM sync_queue WHERE done_at IS NULL") == [(0,)]


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
    assert rows(engine, "SELECT count(*) FROM backfill_ids") == [(N,)]


def test_a_handed_id_gets_the_row_its_outcome_leaves_and_one_queued_meanwhile_is_kept(
    engine: Engine,
) -> None:
    """Not found, failed: the row is written in the state a claimed id would be acked in
    (re-check / retry due later, the attempt counted), part of the backfill, so that the
    backfill's own retries claim it. An id another process queued meanwhile keeps its row as
    it is (it is fetched again) and joins the backfill."""
    hand = Hand(100)
    hand.put("wdk", "biz", ["1001", "1002", "1003", "1004"])
    items = {i.key: i for i in hand.take("wdk", 10)}
    assert not any(i.queued for i in items.values())
    run_id = rows(engine, "INSERT INTO sync_runs (kind) VALUES ('backfill') RETURNING id")[0][0]
    with engine.begin() as conn:
        backfill_id, _, _ = backfills.begin(conn, "wdk", "biz", "ids.txt", "fp", 4)
        queue.enqueue(conn, "wdk", "biz", ["1004"])  # a message's, meanwhile
        written = queue.record_handed(
            conn,
            [
                queue.Outcome(items["1001"], "done"),
                queue.Outcome(items["1002"], "not_found"),
                queue.Outcome(items["1003"], "failed", "TransportError", "HTTP 502"),
                queue.Outcome(items["1004"], "done"),
            ],
            queue.Policy(not_found_delay=600, retry_base=30),
            run_id,
            backfill_id,
        )
    assert written == 3
    got = rows(
        engine,
        "SELECT key, state, attempts, not_found_checks, last_error_class, run_id, "
        "next_attempt_at IS NOT NULL AND next_attempt_at > now() + interval '20 seconds', "
        "done_at IS NOT NULL, priority FROM sync_queue ORDER BY key",
    )
    bulk, live = queue.PRIORITY_BULK, queue.PRIORITY_LIVE
    assert got == [
        ("1001", "done", 0, 0, None, run_id, False, True, bulk),
        ("1002", "not_found", 0, 1, None, run_id, True, True, bulk),
        ("1003", "failed", 1, 0, "TransportError", run_id, True, False, bulk),
        ("1004", "pending", 0, 0, None, None, False, False, live),  # kept as it was
    ]
    assert rows(engine, "SELECT count(*) FROM backfill_ids") == [(4,)]


def test_ids_still_in_the_hand_when_the_drain_ends_are_queued_pending(engine: Engine) -> None:
    """Waiting ids, and ids taken by a batch that never committed (a stop, a ban, the database
    away), are queued pending for everyone, as part of the backfill; those whose batch
    committed are not touched again."""
    hand = Hand(100)
    hand.put("wdk", "biz", [str(1000 + i) for i in range(10)])
    taken = hand.take("wdk", 4)
    committed, lost = taken[:2], taken[2:]
    with engine.begin() as conn:
        backfill_id, _, _ = backfills.begin(conn, "wdk", "biz", "ids.txt", "fp", 10)
        queue.record_handed(
            conn, [queue.Outcome(i, "done") for i in committed], queue.Policy(), None, backfill_id
        )
    hand.written(committed)
    assert intake.give_back(engine, backfill_id, hand, seal=True) == 8  # 6 waiting + 2 taken
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1 ORDER BY 1") == [
        ("done", 2),
        ("pending", 8),
    ]
    assert {k for (k,) in rows(engine, "SELECT key FROM sync_queue WHERE state = 'pending'")} == {
        i.key for i in lost
    } | {str(1000 + i) for i in range(4, 10)}
    assert rows(engine, "SELECT count(*) FROM backfill_ids") == [(10,)]
    assert rows(engine, "SELECT ids FROM backfills") == [(10,)]
    assert hand.take("wdk", 10) == []  # closed
    assert not hand.put("wdk", "biz", ["1"])


async def test_beside_another_process_on_the_quota_the_ids_are_queued_for_everyone(
    sim: Simulator, engine: Engine, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With another holder of the app key's quota (a worker), the feeder hands nothing over to
    the backfill: its ids are queued pending, for every process to claim, as without a hand."""
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
    """A worker starts during a lone backfill: the ids still waiting in the hand are queued
    (pending, for every process) and the rest is queued for everyone; none is fetched twice."""
    s = settings_for(sim.url, batch_size=20, claim_size=40)
    keys = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(N)]
    monkeypatch.setattr(Syncer, "_alone", lambda self: self.hand.handed < 200)
    real_queue_handed = queue.queue_handed
    given_back: list[int] = []

    def queue_handed(conn: Any, items: Any, *args: Any, **kwargs: Any) -> int:
        given_back.append(len(items))
        return real_queue_handed(conn, items, *args, **kwargs)

    monkeypatch.setattr(queue, "queue_handed", queue_handed)
    result, fed, hand, _, from_table = await _backfill_with_hand(
        engine, s, keys, monkeypatch, window=150
    )
    assert fed.complete
    assert hand.handed == 200  # two chunks of 100 handed over while alone, none after
    assert sum(given_back) > 0  # some were still waiting when the other process came
    assert from_table == N - 200 + sum(given_back)
    assert result.counters.ids_claimed == N  # each id fetched once
    assert rows(engine, "SELECT state, count(*) FROM sync_queue GROUP BY 1") == [("done", N)]
    assert rows(engine, "SELECT count(*) FROM wdk_orders") == [(N,)]
    assert rows(engine, "SELECT count(*) FROM backfill_ids") == [(N,)]
