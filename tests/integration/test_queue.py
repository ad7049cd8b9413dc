"""The queue on a real Postgres: enqueue, claim with SKIP LOCKED and leases, ack, requeue."""

from __future__ import annotations

import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl.db import queue
from etl.db.arrays import number_array, text_array

POLICY = queue.Policy(
    max_attempts=2, retry_base=0.01, retry_max=0.01, not_found_checks=2, not_found_delay=0.01
)


def _states(engine: Engine) -> dict[str, int]:
    with engine.begin() as c:
        return dict(c.execute(sa.text("SELECT state, count(*) FROM sync_queue GROUP BY 1")).all())


def test_enqueue_is_idempotent_and_refresh_rearms_finished(engine: Engine) -> None:
    keys = [str(i) for i in range(1, 11)]
    with engine.begin() as c:
        assert queue.enqueue(c, "wdk", "biz", keys) == 10
        assert queue.enqueue(c, "wdk", "biz", keys) == 0
        assert queue.enqueue(c, "wdk", "tb_biz", keys[:2]) == 2  # another kind, another row
        items = queue.claim(c, "wdk", 5, 60, "w1", None)
        queue.ack(c, [queue.Outcome(i, "done") for i in items], POLICY, "w1")
        # refresh re-arms the 5 done ones only (pending and leased are left alone)
        assert queue.enqueue(c, "wdk", "biz", keys, refresh=True) == 5
    assert _states(engine) == {"pending": 12}


def test_two_claimers_never_get_the_same_id(engine: Engine) -> None:
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", [str(i) for i in range(1, 101)])
    with engine.connect() as a, engine.connect() as b:
        ta, tb = a.begin(), b.begin()
        first = queue.claim(a, "wdk", 60, 60, "a", None)  # holds its row locks (not committed)
        second = queue.claim(b, "wdk", 60, 60, "b", None)  # skips them
        ta.commit()
        tb.commit()
    assert len(first) == 60
    assert len(second) == 40
    assert not {i.id for i in first} & {i.id for i in second}


def test_expired_lease_is_claimed_again_and_the_old_ack_is_refused(engine: Engine) -> None:
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", ["1", "2"])
        old = queue.claim(c, "wdk", 10, 60, "crashed", None)
    assert len(old) == 2
    with engine.begin() as c:
        assert queue.claim(c, "wdk", 10, 60, "other", None) == []  # lease still valid
        # the lease runs out (set, not slept: a busy CI machine once took longer than a short
        # lease between the claim and the check above)
        c.execute(sa.text("UPDATE sync_queue SET leased_until = now() - interval '1 second'"))
    with engine.begin() as c:  # a claim that does not look for expired leases leaves them
        assert queue.claim(c, "wdk", 10, 60, "other", None, expired=False) == []
    with engine.begin() as c:
        new = queue.claim(c, "wdk", 10, 60, "other", None)
        assert [i.id for i in new] == [i.id for i in old]
        # the crashed worker's late ack no longer applies
        assert queue.ack(c, [queue.Outcome(i, "done") for i in old], POLICY, "crashed") == 0
        assert queue.ack(c, [queue.Outcome(i, "done") for i in new], POLICY, "other") == 2


def test_failed_ids_retry_then_die_and_can_be_requeued(engine: Engine) -> None:
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", ["7"])
    for _ in range(2):
        time.sleep(0.03)
        with engine.begin() as c:
            items = queue.claim(c, "wdk", 10, 60, "w", None)
            assert len(items) == 1
            queue.ack(c, [queue.Outcome(items[0], "failed", "CallerError", "bad id")], POLICY, "w")
    assert _states(engine) == {"dead": 1}
    with engine.begin() as c:
        dead = queue.dead(c)
        assert dead[0]["last_error_class"] == "CallerError"
        assert queue.requeue_dead(c, error_class="TransportError") == 0
        assert queue.requeue_dead(c, error_class="CallerError") == 1
    assert _states(engine) == {"pending": 1}


def _row(engine: Engine) -> tuple[object, ...]:
    with engine.begin() as c:
        return tuple(
            c.execute(
                sa.text(
                    "SELECT state, not_found_checks, next_attempt_at > now(), "
                    "next_attempt_at IS NULL FROM sync_queue"
                )
            ).one()
        )


def test_not_found_is_visible_at_once_and_rechecked_from_that_state(engine: Engine) -> None:
    policy = queue.Policy(not_found_checks=2, not_found_delay=0.3)
    with engine.begin() as c:
        queue.enqueue(c, "omni", "omni", ["u,1,o"])
        items = queue.claim(c, "omni", 10, 60, "w", None)
        queue.ack(c, [queue.Outcome(items[0], "not_found")], policy, "w")
    # not_found at once, carrying the time of its re-check (not counted as backlog)
    assert _row(engine) == ("not_found", 1, True, False)
    with engine.begin() as c:
        assert queue.claim(c, "omni", 10, 60, "w", None) == []  # not due yet
        depth = {r["state"]: r for r in queue.depth(c)}
        assert depth["not_found"]["due"] == 0
        assert depth["not_found"]["next_at"] is not None
    time.sleep(0.35)
    with engine.begin() as c:
        items = queue.claim(c, "omni", 10, 60, "w", None)
        assert [i.prior_state for i in items] == ["not_found"]
        # a release (shutdown, ban) gives it back to the state it was claimed from
        assert queue.release(c, items, "w") == 1
    assert _row(engine)[0] == "not_found"
    with engine.begin() as c:
        items = queue.claim(c, "omni", 10, 60, "w", None)
        queue.ack(c, [queue.Outcome(items[0], "not_found")], policy, "w")
    assert _row(engine) == ("not_found", 2, None, True)  # no re-check left: never claimed again
    with engine.begin() as c:
        assert queue.claim(c, "omni", 10, 60, "w", None) == []


def test_release_gives_items_back_without_using_an_attempt(engine: Engine) -> None:
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", ["1"])
        items = queue.claim(c, "wdk", 10, 60, "w", None)
        assert queue.release(c, items, "w", None, "banned") == 1
        row = c.execute(sa.text("SELECT state, attempts, last_error FROM sync_queue")).one()
    assert tuple(row) == ("pending", 0, "banned")


def test_leases_of_killed_local_processes_are_released(engine: Engine) -> None:
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", ["1", "2", "3"])
        queue.claim(c, "wdk", 1, 600, "myhost:999999#1", None)
        queue.claim(c, "wdk", 1, 600, "myhost:1#2", None)
        queue.claim(c, "wdk", 1, 600, "otherhost:999999#3", None)
        n = queue.release_dead_local(c, "myhost", alive=lambda pid: pid == 1)
    assert n == 1
    assert _states(engine) == {"pending": 1, "leased": 2}


def test_claims_serve_live_priority_before_bulk_and_live_requeue_upgrades(engine: Engine) -> None:
    bulk = [str(i) for i in range(100, 160)]
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", bulk, priority=queue.PRIORITY_BULK)
    time.sleep(0.01)  # the live ids fall due after the backlog: priority, not age, puts them first
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", ["7", "8"])
        assert queue.enqueue(c, "wdk", "biz", ["150"]) == 0  # already queued: only more urgent
        first = queue.claim(c, "wdk", 3, 60, "w1", None)
    assert {i.key for i in first} == {"7", "8", "150"}
    with engine.begin() as c:
        rest = queue.claim(c, "wdk", 100, 60, "w1", None)
        queue.ack(c, [queue.Outcome(i, "done") for i in first + rest], POLICY, "w1")
        # a bulk enqueue never makes a waiting live id less urgent, and a refresh re-arms a
        # finished id at the priority it is asked for
        queue.enqueue(c, "wdk", "biz", ["9"])
        queue.enqueue(c, "wdk", "biz", ["9"], priority=queue.PRIORITY_BULK)
        queue.enqueue(c, "wdk", "biz", ["7"], refresh=True, priority=queue.PRIORITY_BULK)
        prios = dict(
            c.execute(sa.text("SELECT key, priority FROM sync_queue WHERE key IN ('7', '9')")).all()
        )
    assert prios == {"9": queue.PRIORITY_LIVE, "7": queue.PRIORITY_BULK}
    assert len(rest) == len(bulk) - 1


def test_claim_uses_the_due_priority_index(engine: Engine) -> None:
    """The claim reads the partial index in claim order: no sort of the backlog, whatever its
    size (bench/queue.py measures the latency up to millions of ids)."""
    where, order = queue._DUE.split(" ORDER BY ")
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", [str(i) for i in range(20_000)], priority=10)
        c.execute(sa.text("ANALYZE sync_queue"))
        plan = "\n".join(
            r[0]
            for r in c.execute(
                sa.text(
                    f"EXPLAIN SELECT id FROM sync_queue WHERE api = 'wdk' AND {where} "
                    f"ORDER BY {order} LIMIT 50 FOR UPDATE SKIP LOCKED"
                )
            )
        )
    assert "ix_sync_queue_due_priority" in plan
    assert "Sort" not in plan


def test_an_ack_records_each_outcome_for_the_ids_its_worker_still_leases_only(
    engine: Engine,
) -> None:
    """Done ids (one statement) and the other outcomes (per-id values) in one ack; ids whose
    lease another worker took over are left as they are."""
    with engine.begin() as c:
        queue.enqueue(c, "wdk", "biz", [str(i) for i in range(1, 9)])
        items = queue.claim(c, "wdk", 8, 60, "w1", None)
    taken = [items[0].id, items[4].id]
    with engine.begin() as c:  # their leases expired and another worker claimed them
        c.execute(
            sa.text("UPDATE sync_queue SET leased_by = 'w2' WHERE id = ANY(:ids)"), {"ids": taken}
        )
    results = ["done", "done", "not_found", "failed", "failed", "dead", "done", "not_found"]
    outcomes = [
        queue.Outcome(item, result, "E", result)
        if result in ("failed", "dead")
        else queue.Outcome(item, result)
        for item, result in zip(items, results, strict=True)
    ]
    with engine.begin() as c:
        assert queue.ack(c, outcomes, POLICY, "w1") == 6
        rows = {
            r[0]: r[1:]
            for r in c.execute(
                sa.text(
                    "SELECT id, state, attempts, not_found_checks, last_error, "
                    "done_at IS NOT NULL, next_attempt_at IS NOT NULL, leased_until IS NULL "
                    "FROM sync_queue"
                )
            )
        }
    assert [rows[i.id][0] for i in items] == [
        "leased", "done", "not_found", "failed", "leased", "dead", "done", "not_found"
    ]  # fmt: skip
    assert rows[items[1].id] == ("done", 0, 0, None, True, False, True)
    assert rows[items[2].id] == ("not_found", 0, 1, None, True, True, True)  # rechecked later
    assert rows[items[3].id] == ("failed", 1, 0, "failed", False, True, True)
    assert rows[items[5].id] == ("dead", 1, 0, "dead", True, False, True)
    assert rows[items[0].id][-1] is False  # still leased, by w2


def test_array_literals_carry_any_text_and_number_exactly(engine: Engine) -> None:
    """The queue's statements pass arrays as literals (etl.db.arrays): whatever a key holds —
    quotes, backslashes, braces, commas, spaces, the word NULL, unicode — comes back as it was,
    and None is NULL."""
    texts = ['a"b', "c\\d", '\\"', "{x,y}", " sp ace ", "NULL", "", "订单-1", None, "{}"]
    numbers = [0, -1, 2**62, None, 1.5, 1e-05, float("inf")]
    with engine.begin() as c:
        assert (
            c.execute(sa.text("SELECT CAST(:v AS text[])"), {"v": text_array(texts)}).scalar_one()
            == texts
        )
        assert c.execute(
            sa.text("SELECT CAST(:v AS text[])"), {"v": text_array(["1", "2"])}
        ).scalar_one() == ["1", "2"]
        assert c.execute(
            sa.text("SELECT CAST(:v AS text[])"), {"v": text_array([None, None])}
        ).scalar_one() == [None, None]
        assert (
            c.execute(sa.text("SELECT CAST(:v AS text[])"), {"v": text_array([])}).scalar_one()
            == []
        )
        got = c.execute(
            sa.text("SELECT CAST(:v AS float8[])"), {"v": number_array(numbers)}
        ).scalar_one()
        assert got == [float(n) if n is not None else None for n in numbers]
        ids = [1, 2**63 - 1]
        assert (
            c.execute(sa.text("SELECT CAST(:v AS bigint[])"), {"v": number_array(ids)}).scalar_one()
            == ids
        )
    # keys with a quote or a backslash are queued and found under exactly those keys
    odd = ['o"1', "o\\2", "o 3"]
    with engine.begin() as c:
        assert queue.enqueue(c, "wdk", "out_order", odd) == 3
        assert queue.known(c, "wdk", "out_order", [*odd, "o4", 'o"1"']) == set(odd)
