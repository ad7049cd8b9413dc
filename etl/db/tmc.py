"""SQL of the message service (TMC): queueing what messages name, settling it when loaded.

Every INSERT / UPDATE of ``sync_queue`` the message service needs is in :func:`record`; the
pipeline calls :func:`settle` (before its ack) and :func:`rearm` (after it) in the transaction
that loads a batch, so a message is answered exactly when a payload fetched after it is stored.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from etl.db import queue
from etl.tmc.messages import TOPICS, Batch

RETAIN_LATENCY_DAYS = 7  # tmc_latency rows older than this are pruned


@dataclass
class Recorded:
    orders: int = 0  # distinct orders the batch named
    queued: int = 0  # of which added to the queue or re-armed
    skipped_stale: int = 0  # the stored payload already answers the message: no fetch


def record(conn: Connection, batch: Batch, slack_seconds: float) -> Recorded:
    """Queue the orders ``batch`` names (one row per order), count its topics and keep its
    unreadable messages. Runs in the caller's transaction; confirm only after it commits."""
    out = Recorded()
    by_kind: dict[tuple[str, str], list[tuple[str, Any, Any, int]]] = {}
    for (api, id_kind, key), (first, last, n) in batch.hints.items():
        by_kind.setdefault((api, id_kind), []).append((key, first, last, n))
    for (api, id_kind), hints in sorted(by_kind.items()):
        hints.sort()  # rows are locked in key order, as settle() does: no deadlock
        fresh, queued = _queue_hints(conn, api, id_kind, hints, slack_seconds)
        out.orders += len(hints)
        out.queued += queued
        out.skipped_stale += len(hints) - fresh
    _count_topics(conn, batch)
    _keep_unreadable(conn, batch)
    return out


def _queue_hints(
    conn: Connection,
    api: str,
    id_kind: str,
    hints: Sequence[tuple[str, Any, Any, int]],
    slack_seconds: float,
) -> tuple[int, int]:
    """(hints the stored payload does not answer yet, queue rows added or re-armed).

    Two statements, hints first: locks are taken hints then queue rows, each in key order, as
    :func:`settle` does (the sub-statements of one WITH run in no defined order)."""
    fresh = (
        conn.execute(
            sa.text(
                "WITH h AS (SELECT * FROM unnest(CAST(:keys AS text[]), CAST(:firsts AS "
                "  timestamptz[]), CAST(:lasts AS timestamptz[]), CAST(:counts AS int[])) "
                "  AS h(key, f, l, n)), "
                # a message older than the stored payload (by the slack) asks for nothing
                "fresh AS (SELECT h.* FROM h LEFT JOIN wdk_orders o ON :api = 'wdk' "
                "  AND :kind = 'biz' AND o.biz_order_id = CAST(h.key AS bigint) "
                "  WHERE o.fetched_at IS NULL "
                "  OR o.fetched_at < h.l + make_interval(secs => :slack)) "
                "INSERT INTO tmc_hints AS t (api, id_kind, key, first_pub_time, last_pub_time, "
                "messages) "
                "SELECT :api, :kind, key, f, l, n FROM fresh ORDER BY key "
                "ON CONFLICT (api, id_kind, key) DO UPDATE SET "
                "first_pub_time = least(t.first_pub_time, EXCLUDED.first_pub_time), "
                "last_pub_time = greatest(t.last_pub_time, EXCLUDED.last_pub_time), "
                "messages = t.messages + EXCLUDED.messages, received_at = now() RETURNING t.key"
            ),
            {
                "keys": [h[0] for h in hints],
                "firsts": [h[1] for h in hints],
                "lasts": [h[2] for h in hints],
                "counts": [h[3] for h in hints],
                "api": api,
                "kind": id_kind,
                "slack": slack_seconds,
            },
        )
        .scalars()
        .all()
    )
    if not fresh:
        return 0, 0
    # finished rows are re-armed; waiting ones fall due now; leased ones are left to rearm()
    # (the fetch in flight may predate the message)
    queued = conn.execute(
        sa.text(
            "INSERT INTO sync_queue AS s (api, id_kind, key) "
            "SELECT :api, :kind, k FROM unnest(CAST(:keys AS text[])) AS k ORDER BY k "
            "ON CONFLICT (api, id_kind, key) DO UPDATE SET "
            "state = CASE WHEN s.state = 'failed' THEN 'failed' ELSE 'pending' END, "
            "attempts = CASE WHEN s.state IN ('failed', 'pending') THEN s.attempts ELSE 0 END, "
            "not_found_checks = 0, next_attempt_at = now(), updated_at = now(), done_at = NULL "
            "WHERE s.state IN ('done', 'not_found', 'dead') "
            "OR (s.state IN ('pending', 'failed') AND s.next_attempt_at > now())"
        ),
        {"keys": sorted(str(k) for k in fresh), "api": api, "kind": id_kind},
    )
    return len(fresh), int(queued.rowcount)


def _count_topics(conn: Connection, batch: Batch) -> None:
    counts = dict(batch.handled)
    for u in batch.unreadable:  # an unreadable message of a handled topic counts there too
        if u.topic in TOPICS:
            counts[u.topic] = counts.get(u.topic, 0) + 1
    rows = [(t, True, n) for t, n in counts.items()]
    rows += [(t, False, n) for t, n in batch.unhandled.items()]
    if not rows:
        return
    conn.execute(
        sa.text(
            "INSERT INTO tmc_topics AS t (topic, handled, messages) "
            "SELECT * FROM unnest(CAST(:topics AS text[]), CAST(:handled AS boolean[]), "
            "CAST(:counts AS bigint[])) "
            "ON CONFLICT (topic) DO UPDATE SET messages = t.messages + EXCLUDED.messages, "
            "handled = EXCLUDED.handled, last_seen_at = now()"
        ),
        {
            "topics": [r[0] for r in rows],
            "handled": [r[1] for r in rows],
            "counts": [r[2] for r in rows],
        },
    )


def _keep_unreadable(conn: Connection, batch: Batch) -> None:
    if not batch.unreadable:
        return
    conn.execute(
        sa.text(
            "INSERT INTO tmc_unreadable (message_id, topic, content, reason) "
            "SELECT * FROM unnest(CAST(:ids AS bigint[]), CAST(:topics AS text[]), "
            "CAST(:contents AS text[]), CAST(:reasons AS text[])) "
            "ON CONFLICT (message_id) DO NOTHING"
        ),
        {
            "ids": [u.message_id for u in batch.unreadable],
            "topics": [u.topic for u in batch.unreadable],
            "contents": [u.content for u in batch.unreadable],
            "reasons": [u.reason[:2000] for u in batch.unreadable],
        },
    )


# ------------------------------------------------------------------------- the load path


def _hinted_keys(api: str, outcomes: Sequence[queue.Outcome]) -> list[str]:
    if api != "wdk":
        return []
    return [o.item.key for o in outcomes if o.item.id_kind == "biz"]


def settle(
    conn: Connection,
    api: str,
    outcomes: Sequence[queue.Outcome],
    worker: str,
    lease_seconds: float,
    slack_seconds: float,
) -> tuple[list[float], list[str]]:
    """Answer the hints of the orders this batch loaded; called after the load and before the
    ack, in the same transaction. A hint is answered when its fetch was claimed after its newest
    message was pulled, or the stored payload was fetched ``slack_seconds`` after its newest
    pub_time; answered hints become tmc_latency rows. Returns (the latencies in seconds, the
    keys whose hints are still open, for :func:`rearm`)."""
    keys = sorted(_hinted_keys(api, outcomes))
    if not keys:
        return [], []
    rows = conn.execute(
        sa.text(
            "WITH hs AS (SELECT h.key, h.first_pub_time, "
            "  (q.leased_until - make_interval(secs => :lease) >= h.received_at "
            "   OR o.fetched_at >= h.last_pub_time + make_interval(secs => :slack)) AS answered "
            "  FROM tmc_hints h JOIN sync_queue q ON q.api = h.api AND q.id_kind = h.id_kind "
            "  AND q.key = h.key AND q.state = 'leased' AND q.leased_by = :worker "
            "  JOIN wdk_orders o ON o.biz_order_id = CAST(h.key AS bigint) "
            "  WHERE h.api = 'wdk' AND h.id_kind = 'biz' AND h.key = ANY(CAST(:keys AS text[])) "
            "  ORDER BY h.key FOR UPDATE OF h), "
            "gone AS (DELETE FROM tmc_hints t USING hs WHERE t.api = 'wdk' "
            "  AND t.id_kind = 'biz' AND t.key = hs.key AND hs.answered "
            "  RETURNING t.key, t.first_pub_time), "
            "lat AS (INSERT INTO tmc_latency (api, key, pub_time, loaded_at, seconds) "
            "  SELECT 'wdk', key, first_pub_time, clock_timestamp(), "
            "  greatest(0, extract(epoch FROM clock_timestamp() - first_pub_time)) FROM gone "
            "  RETURNING seconds) "
            "SELECT NULL, seconds FROM lat UNION ALL SELECT key, NULL FROM hs WHERE NOT answered"
        ),
        {"keys": keys, "worker": worker, "lease": lease_seconds, "slack": slack_seconds},
    ).all()
    # Lock this batch's queue rows now, in key order: a concurrent record() locks hints, then
    # queue rows, both in key order; the ack alone would lock them in id order and deadlock.
    conn.execute(
        sa.text(
            "SELECT 1 FROM sync_queue WHERE api = 'wdk' AND id_kind = 'biz' "
            "AND key = ANY(CAST(:keys AS text[])) ORDER BY key FOR UPDATE"
        ),
        {"keys": keys},
    )
    latencies = [float(r[1]) for r in rows if r[0] is None]
    still_open = [str(r[0]) for r in rows if r[0] is not None]
    return latencies, still_open


def rearm(conn: Connection, keys: Sequence[str]) -> int:
    """After the ack: orders whose messages arrived while they were being fetched go back to
    pending (their new state was not in the payload just loaded)."""
    if not keys:
        return 0
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue SET state = 'pending', attempts = 0, not_found_checks = 0, "
            "next_attempt_at = now(), updated_at = now(), done_at = NULL "
            "WHERE api = 'wdk' AND id_kind = 'biz' AND key = ANY(CAST(:keys AS text[])) "
            "AND state = 'done'"
        ),
        {"keys": list(keys)},
    )
    return int(result.rowcount)


def forget_final(conn: Connection) -> int:
    """Drop hints of orders the platform says do not exist (not_found / dead for good)."""
    result = conn.execute(
        sa.text(
            "DELETE FROM tmc_hints h USING sync_queue q WHERE q.api = h.api "
            "AND q.id_kind = h.id_kind AND q.key = h.key AND q.state IN ('not_found', 'dead')"
        )
    )
    return int(result.rowcount)


def prune_latency(conn: Connection, days: int = RETAIN_LATENCY_DAYS) -> int:
    result = conn.execute(
        sa.text("DELETE FROM tmc_latency WHERE loaded_at < now() - make_interval(days => :d)"),
        {"d": days},
    )
    return int(result.rowcount)


# ----------------------------------------------------------------------------- reading


def freshness(conn: Connection) -> list[dict[str, Any]]:
    """The report_tmc_freshness rows (p50 / p95 message → row over the last hour)."""
    rows = conn.execute(sa.text("SELECT * FROM report_tmc_freshness ORDER BY api")).mappings()
    return [dict(r) for r in rows]


def topics(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            "SELECT topic, handled, messages, last_seen_at FROM tmc_topics "
            "ORDER BY handled DESC, messages DESC, topic"
        )
    ).mappings()
    return [dict(r) for r in rows]


def unreadable(conn: Connection, limit: int = 20) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            "SELECT message_id, topic, content, reason, received_at FROM tmc_unreadable "
            "ORDER BY received_at DESC, id DESC LIMIT :limit"
        ),
        {"limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


def unreadable_count(conn: Connection) -> int:
    return int(conn.execute(sa.text("SELECT count(*) FROM tmc_unreadable")).scalar_one())
