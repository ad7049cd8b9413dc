"""Retention on a real Postgres: what prune removes, and what it must never remove."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl.db import backfills, load, partitions, queue, retention
from etl.normalize.orders import normalize_wdk
from etl.simulator import data
from tests.helpers import one, q

NOW = datetime.now(UTC)
KEEP = retention.Keep(queue_days=90, archive_days=400, runs_days=400)


def _queue_row(engine: Engine, key: str, state: str, days_ago: float, recheck: bool) -> None:
    """A queue row in ``state`` that finished (done_at) ``days_ago``."""
    with engine.begin() as conn:
        queue.enqueue(conn, "wdk", "biz", [key])
        conn.execute(
            sa.text(
                "UPDATE sync_queue SET state = :s, done_at = now() - make_interval(days => :d), "
                "updated_at = now() - make_interval(days => :d), "
                "next_attempt_at = CASE WHEN :r THEN now() - interval '1 day' END, "
                "leased_until = CASE WHEN :s = 'leased' THEN now() + interval '1 hour' END "
                "WHERE key = :k"
            ),
            {"s": state, "d": days_ago, "r": recheck, "k": key},
        )


def test_prune_removes_only_finished_queue_rows_older_than_keep(
    engine: Engine, db_url: str
) -> None:
    gone = {
        "1001": ("done", 100, False),
        "1002": ("dead", 100, False),
        "1003": ("not_found", 100, False),  # no re-check left
    }
    kept = {
        "2001": ("pending", 100, True),
        "2002": ("leased", 100, False),
        "2003": ("failed", 100, True),
        "2004": ("not_found", 100, True),  # a re-check is due
        "2005": ("done", 10, False),  # finished within the keep period
        "2006": ("dead", 89, False),
    }
    for key, (state, days, recheck) in {**gone, **kept}.items():
        _queue_row(engine, key, state, days, recheck)
    with engine.begin() as conn:  # every one of them is part of a backfill
        backfill = backfills.begin(conn, "wdk", "biz", "ids.txt", "f" * 64, 9)[0]
        backfills.add(conn, backfill, "wdk", "biz", [*gone, *kept], NOW)
    dry = retention.prune(engine, KEEP, dry_run=True)
    assert dry.queue == 3
    assert one(db_url, "SELECT count(*) FROM sync_queue") == 9
    assert one(db_url, "SELECT count(*) FROM backfill_ids") == 9
    report = retention.prune(engine, KEEP)
    assert report.queue == 3
    left = {r[0] for r in q(db_url, "SELECT key FROM sync_queue")}
    assert left == set(kept)
    # a pruned row leaves the backfill with it (backfill_ids has no foreign key to cascade it)
    assert one(db_url, "SELECT count(*) FROM backfill_ids") == len(kept)
    members = q(db_url, "SELECT q.key FROM backfill_ids b JOIN sync_queue q ON q.id = b.queue_id")
    assert {r[0] for r in members} == set(kept)
    # an id that comes back is simply queued again, as a fresh pending row
    with engine.begin() as conn:
        assert queue.enqueue(conn, "wdk", "biz", ["1001", "2005"]) == 1
    assert q(db_url, "SELECT state, attempts, done_at FROM sync_queue WHERE key = '1001'") == [
        ("pending", 0, None)
    ]
    assert one(db_url, "SELECT state FROM sync_queue WHERE key = '2005'") == "done"


def test_keep_zero_keeps_forever(engine: Engine, db_url: str) -> None:
    _queue_row(engine, "1001", "done", 5000, False)
    report = retention.prune(engine, retention.Keep(0, 0, 0))
    assert (report.queue, report.archive, report.runs) == (0, 0, 0)
    assert one(db_url, "SELECT count(*) FROM sync_queue") == 1


def test_prune_removes_ended_runs_older_than_keep_never_a_running_one(
    engine: Engine, db_url: str
) -> None:
    with engine.begin() as conn:
        for status, days in (("ok", 500), ("killed", 500), ("running", 500), ("ok", 10)):
            conn.execute(
                sa.text(
                    "INSERT INTO sync_runs (kind, status, started_at, ended_at) VALUES "
                    "('sync', :s, now() - make_interval(days => :d), "
                    "CASE WHEN :s <> 'running' THEN now() - make_interval(days => :d) END)"
                ),
                {"s": status, "d": days},
            )
    assert retention.prune(engine, KEEP, dry_run=True).runs == 2
    assert retention.prune(engine, KEEP).runs == 2
    assert sorted(q(db_url, "SELECT status FROM sync_runs")) == [("ok",), ("running",)]


def _version(key: int, status: str, days_ago: float) -> tuple[dict[str, Any], datetime]:
    order = copy.deepcopy(data.wdk_order(key))
    order["order_status"] = status
    return order, NOW - timedelta(days=days_ago)


def _load(conn: psycopg.Connection[Any], order: dict[str, Any], at: datetime) -> None:
    load.load(conn, "wdk", [normalize_wdk(order, at)])
    conn.commit()


A, B, C, D = (data.FIRST_DEMO_BIZ_ID + i for i in range(4))


def _history(db_url: str) -> None:
    """Four orders whose versions lie in distinct months (50 days apart or more):

    - A: PAID -500 d, PACKAGED -450 d, SUCCESS -10 d (current)
    - B: PAID -500 d, SUCCESS -450 d (current)
    - C: PAID -600 d, REFUNDED -550 d, PAID again -500 d (current: the hash of its first version)
    - D: SUCCESS -700 d, its only version
    """
    with psycopg.connect(db_url) as conn:
        for key, status, days in (
            (D, "SUCCESS", 700),
            (C, "PAID", 600),
            (C, "REFUNDED", 550),
            (A, "PAID", 500),
            (B, "PAID", 500),
            (C, "PAID", 500),
            (A, "PACKAGED", 450),
            (B, "SUCCESS", 450),
            (A, "SUCCESS", 10),
        ):
            _load(conn, *_version(key, status, days))


def _versions(db_url: str) -> set[tuple[int, str, int]]:
    rows = q(
        db_url,
        "SELECT order_key, raw::jsonb->>'order_status', "
        "round(extract(epoch FROM now() - fetched_at) / 86400) FROM order_archive",
    )
    return {(int(k), s, int(d)) for k, s, d in rows}


def test_prune_never_removes_a_current_version(engine: Engine, db_url: str) -> None:
    _history(db_url)
    before = {k: one(db_url, "SELECT etl_raw('wdk', %s)", str(k)) for k in (A, B, C, D)}
    assert one(db_url, "SELECT count(*) FROM order_archive") == 9
    dry = retention.prune(engine, KEEP, dry_run=True)
    assert dry.archive == 3
    assert one(db_url, "SELECT count(*) FROM order_archive") == 9
    report = retention.prune(engine, KEEP)
    assert report.archive == 3
    c_refunded = partitions.name_of(partitions.month_start(NOW - timedelta(days=550)))
    assert report.partitions_dropped == [c_refunded]  # it held C's REFUNDED version alone
    assert _versions(db_url) == {
        (A, "PACKAGED", 450),  # superseded 10 days ago: kept 400 days from then
        (A, "SUCCESS", 10),
        (B, "SUCCESS", 450),
        (C, "PAID", 600),  # the current hash: kept (the same content as C's current version)
        (C, "PAID", 500),
        (D, "SUCCESS", 700),
    }
    # every current version still reads the same (etl_raw, replay's query)
    assert {k: one(db_url, "SELECT etl_raw('wdk', %s)", str(k)) for k in (A, B, C, D)} == before
    # the history went into monthly partitions (they were not there before)
    names = {p.name for p in _partitions(engine)}
    assert partitions.name_of(partitions.month_start(NOW - timedelta(days=700))) in names
    assert c_refunded not in names
    assert one(db_url, "SELECT count(*) FROM order_archive_default") == 0
    # nothing more to do
    again = retention.prune(engine, KEEP)
    assert (again.archive, again.partitions_dropped) == (0, [])


def _partitions(engine: Engine) -> list[partitions.Partition]:
    with engine.begin() as conn:
        return partitions.list_partitions(conn)


def test_the_worker_mark_makes_a_second_prune_read_only_new_versions(
    engine: Engine, db_url: str
) -> None:
    _history(db_url)
    first = retention.prune(engine, KEEP)
    top = one(
        db_url, "SELECT max(id) FROM order_archive WHERE fetched_at < now() - '400 days'::interval"
    )
    assert first.archive_mark >= top
    # B changes again: its version of -450 d is now superseded, but only 0 days ago
    with psycopg.connect(db_url) as conn:
        _load(conn, *_version(B, "REFUNDED", 0))
    second = retention.prune(engine, KEEP, archive_mark=first.archive_mark)
    assert second.archive == 0
    assert second.archive_mark == first.archive_mark  # stops at the first young version


def test_a_second_prune_at_the_same_time_skips(engine: Engine) -> None:
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT pg_advisory_lock(:k)"), {"k": retention.LOCK_PRUNE})
        report = retention.prune(engine, KEEP)
        conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": retention.LOCK_PRUNE})
    assert report.skipped
    assert "skipped" in report.line()


def test_partitions_are_created_ahead_and_a_default_catches_the_rest(
    engine: Engine, db_url: str
) -> None:
    months = partitions.months_ahead(NOW)
    with engine.begin() as conn:
        for month in months[1:]:
            partitions.drop(conn, partitions.name_of(month))
    with psycopg.connect(db_url) as conn:
        # far in the future: no partition yet, the default takes it and the load goes through
        _load(conn, *_version(A, "PAID", -800))
    assert one(db_url, "SELECT count(*) FROM order_archive_default") == 1
    report = retention.prune(engine, KEEP)
    far = partitions.name_of(partitions.month_start(NOW + timedelta(days=800)))
    assert set(report.partitions_created) == {far, *map(partitions.name_of, months[1:])}
    assert one(db_url, f"SELECT count(*) FROM {far}") == 1
    assert one(db_url, "SELECT count(*) FROM order_archive_default") == 0
    assert one(db_url, "SELECT etl_raw('wdk', %s)->>'order_status'", str(A)) == "PAID"


def test_a_stop_ends_the_prune_between_batches(engine: Engine, db_url: str) -> None:
    _queue_row(engine, "1001", "done", 100, False)
    _history(db_url)
    report = retention.prune(engine, KEEP, stop=lambda: True)  # a worker told to stop
    assert (report.queue, report.runs) == (0, 0)
    assert report.archive_mark == 0  # the next prune starts where this one did
    assert one(db_url, "SELECT count(*) FROM sync_queue") == 1
    assert retention.prune(engine, KEEP).queue == 1
