"""The work queue in ``sync_queue``: enqueue, claim, ack, release, requeue. Owns its SQL.

One row per (api, id kind, key). Workers claim batches with ``FOR UPDATE SKIP LOCKED`` and a
lease (committed at once, so the fetch holds no transaction); the outcome of a batch is acked in
the same transaction as its load, and only while the lease is still ours. A crashed worker's
lease expires and the rows are claimed again; the load is idempotent, so nothing is lost or
duplicated.

States: ``pending`` → ``leased`` → ``done`` | ``not_found`` | ``failed`` (retried later with
backoff) → ``dead`` (after ``max_attempts``). A not-found id is asked for again
``not_found_checks`` times (orders can appear late) before it stays ``not_found``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

CLAIMABLE = ("pending", "failed")
FINAL = ("done", "not_found", "dead")


@dataclass(frozen=True)
class Item:
    id: int
    api: str
    id_kind: str
    key: str
    attempts: int
    not_found_checks: int


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed item: ``done``, ``not_found`` or ``failed``."""

    item: Item
    result: str
    error_class: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class Policy:
    """Retry and re-check rules (from settings)."""

    max_attempts: int = 6
    retry_base: float = 30.0
    retry_max: float = 3600.0
    not_found_checks: int = 3
    not_found_delay: float = 600.0

    def retry_delay(self, attempts: int) -> float:
        return float(min(self.retry_max, self.retry_base * 2 ** max(0, attempts - 1)))

    def recheck_delay(self, checks: int) -> float:
        return float(self.not_found_delay * 2 ** max(0, checks - 1))


def enqueue(
    conn: Connection, api: str, id_kind: str, keys: Sequence[str], *, refresh: bool = False
) -> int:
    """Queue ``keys``; an id already queued is left alone, or re-armed (``refresh``) when it has
    finished. Returns how many rows were added or re-armed."""
    if not keys:
        return 0
    conflict = "DO NOTHING"
    if refresh:
        conflict = (
            "DO UPDATE SET state = 'pending', attempts = 0, not_found_checks = 0, "
            "next_attempt_at = now(), last_error_class = NULL, last_error = NULL, "
            "updated_at = now(), done_at = NULL "
            "WHERE sync_queue.state IN ('done', 'not_found', 'dead', 'failed')"
        )
    total = 0
    for start in range(0, len(keys), 50_000):
        chunk = list(keys[start : start + 50_000])
        result = conn.execute(
            sa.text(
                "INSERT INTO sync_queue (api, id_kind, key) "
                "SELECT :api, :kind, k FROM unnest(CAST(:keys AS text[])) AS k "
                f"ON CONFLICT (api, id_kind, key) {conflict}"
            ),
            {"api": api, "kind": id_kind, "keys": chunk},
        )
        total += result.rowcount
    return total


def claim(
    conn: Connection, api: str, limit: int, lease_seconds: float, worker: str, run_id: int | None
) -> list[Item]:
    """Lease up to ``limit`` due items of ``api`` (and expired leases); the caller commits."""
    rows = conn.execute(
        sa.text(
            "WITH c AS (SELECT id FROM sync_queue WHERE api = :api AND ("
            "  (state IN ('pending', 'failed') AND next_attempt_at <= now())"
            "  OR (state = 'leased' AND leased_until < now()))"
            " ORDER BY next_attempt_at, id LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "UPDATE sync_queue q SET state = 'leased', leased_until = now() + make_interval("
            "secs => :lease), leased_by = :worker, run_id = :run, updated_at = now() "
            "FROM c WHERE q.id = c.id "
            "RETURNING q.id, q.api, q.id_kind, q.key, q.attempts, q.not_found_checks"
        ),
        {"api": api, "limit": limit, "lease": lease_seconds, "worker": worker, "run": run_id},
    ).all()
    return [Item(*row) for row in sorted(rows, key=lambda r: r[0])]


def _plan(outcome: Outcome, policy: Policy) -> tuple[str, int, int, float]:
    """(state, attempts, not_found_checks, delay) after ``outcome``."""
    item = outcome.item
    if outcome.result == "done":
        return "done", item.attempts, item.not_found_checks, 0.0
    if outcome.result == "not_found":
        checks = item.not_found_checks + 1
        if checks >= policy.not_found_checks:
            return "not_found", item.attempts, checks, 0.0
        return "pending", item.attempts, checks, policy.recheck_delay(checks)
    attempts = item.attempts + 1
    if attempts >= policy.max_attempts:
        return "dead", attempts, item.not_found_checks, 0.0
    return "failed", attempts, item.not_found_checks, policy.retry_delay(attempts)


def ack(conn: Connection, outcomes: Sequence[Outcome], policy: Policy, worker: str) -> int:
    """Record outcomes of items still leased by ``worker``; returns how many were recorded.

    Runs in the caller's transaction (the one that loaded the orders).
    """
    if not outcomes:
        return 0
    plans = [_plan(o, policy) for o in outcomes]
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue q SET state = v.state, attempts = v.attempts, "
            "not_found_checks = v.checks, "
            "next_attempt_at = now() + make_interval(secs => v.delay), "
            "last_error_class = v.err_class, last_error = v.err, leased_until = NULL, "
            "updated_at = now(), "
            "done_at = CASE WHEN v.state IN ('done', 'not_found', 'dead') THEN now() END "
            "FROM (SELECT unnest(CAST(:ids AS bigint[])) AS id, unnest(CAST(:states AS text[])) "
            "AS state, unnest(CAST(:attempts AS int[])) AS attempts, "
            "unnest(CAST(:checks AS int[])) AS checks, unnest(CAST(:delays AS float8[])) AS delay, "
            "unnest(CAST(:classes AS text[])) AS err_class, "
            "unnest(CAST(:errs AS text[])) AS err) v "
            "WHERE q.id = v.id AND q.state = 'leased' AND q.leased_by = :worker"
        ),
        {
            "ids": [o.item.id for o in outcomes],
            "states": [p[0] for p in plans],
            "attempts": [p[1] for p in plans],
            "checks": [p[2] for p in plans],
            "delays": [p[3] for p in plans],
            "classes": [o.error_class for o in outcomes],
            "errs": [(o.error or "")[:2000] or None for o in outcomes],
            "worker": worker,
        },
    )
    return int(result.rowcount)


def release(
    conn: Connection,
    items: Sequence[Item],
    worker: str,
    not_before: datetime | None = None,
    reason: str | None = None,
) -> int:
    """Give leased items back untouched (no attempt used), due again at ``not_before``."""
    if not items:
        return 0
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue SET state = 'pending', leased_until = NULL, updated_at = now(), "
            "next_attempt_at = GREATEST(now(), COALESCE(CAST(:nb AS timestamptz), now())), "
            "last_error = COALESCE(CAST(:reason AS text), last_error) "
            "WHERE id = ANY(CAST(:ids AS bigint[])) AND state = 'leased' AND leased_by = :worker"
        ),
        {"ids": [i.id for i in items], "nb": not_before, "worker": worker, "reason": reason},
    )
    return int(result.rowcount)


def reclaim_expired(conn: Connection) -> int:
    """Put items whose lease expired (their worker died) back to pending."""
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue SET state = 'pending', leased_until = NULL, updated_at = now() "
            "WHERE state = 'leased' AND leased_until < now()"
        )
    )
    return int(result.rowcount)


def release_dead_local(conn: Connection, host: str, alive: Callable[[int], bool]) -> int:
    """Release leases held by processes of this ``host`` that no longer run (killed workers),
    without waiting for the leases to expire. ``leased_by`` is ``host:pid#run``."""
    holders = conn.execute(
        sa.text(
            "SELECT DISTINCT leased_by FROM sync_queue WHERE state = 'leased' "
            "AND leased_by LIKE :prefix"
        ),
        {"prefix": host.replace("%", r"\%").replace("_", r"\_") + ":%"},
    ).scalars()
    dead_holders = []
    for holder in holders:
        pid_text = holder.split(":", 1)[1].split("#", 1)[0]
        if pid_text.isdigit() and not alive(int(pid_text)):
            dead_holders.append(holder)
    if not dead_holders:
        return 0
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue SET state = 'pending', leased_until = NULL, updated_at = now() "
            "WHERE state = 'leased' AND leased_by = ANY(CAST(:holders AS text[]))"
        ),
        {"holders": dead_holders},
    )
    return int(result.rowcount)


def requeue_dead(conn: Connection, error_class: str | None = None, api: str | None = None) -> int:
    """Dead (and failed) items back to pending with fresh attempts."""
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue SET state = 'pending', attempts = 0, next_attempt_at = now(), "
            "updated_at = now(), done_at = NULL WHERE state = 'dead' "
            "AND (CAST(:cls AS text) IS NULL OR last_error_class = :cls) "
            "AND (CAST(:api AS text) IS NULL OR api = :api)"
        ),
        {"cls": error_class, "api": api},
    )
    return int(result.rowcount)


def dead(conn: Connection, limit: int = 50, error_class: str | None = None) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.text(
            "SELECT api, id_kind, key, attempts, last_error_class, last_error, updated_at "
            "FROM sync_queue WHERE state = 'dead' "
            "AND (CAST(:cls AS text) IS NULL OR last_error_class = :cls) "
            "ORDER BY updated_at DESC, id LIMIT :limit"
        ),
        {"cls": error_class, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


def depth(conn: Connection) -> list[dict[str, Any]]:
    """Rows per (api, state), with the oldest due time of each."""
    rows = conn.execute(
        sa.text(
            "SELECT api, state, count(*) AS n, min(next_attempt_at) AS oldest, "
            "count(*) FILTER (WHERE next_attempt_at <= now()) AS due "
            "FROM sync_queue GROUP BY api, state ORDER BY api, state"
        )
    ).mappings()
    return [dict(r) for r in rows]


def due_count(conn: Connection, api: str | None = None) -> int:
    """Items claimable now (due pending / failed, expired leases)."""
    return int(
        conn.execute(
            sa.text(
                "SELECT count(*) FROM sync_queue WHERE (CAST(:api AS text) IS NULL OR api = :api) "
                "AND ((state IN ('pending', 'failed') AND next_attempt_at <= now()) "
                "OR (state = 'leased' AND leased_until < now()))"
            ),
            {"api": api},
        ).scalar_one()
    )


def next_due(conn: Connection, within: timedelta, api: str | None = None) -> datetime | None:
    """When the next pending / failed item falls due (or a lease expires), if within ``within``."""
    value = conn.execute(
        sa.text(
            "SELECT min(CASE WHEN state = 'leased' THEN leased_until ELSE next_attempt_at END) "
            "FROM sync_queue WHERE state IN ('pending', 'failed', 'leased') "
            "AND (CAST(:api AS text) IS NULL OR api = :api) "
            "AND CASE WHEN state = 'leased' THEN leased_until ELSE next_attempt_at END "
            "<= now() + make_interval(secs => :within)"
        ),
        {"api": api, "within": within.total_seconds()},
    ).scalar_one()
    return value if isinstance(value, datetime) else None


def refresh_open(
    conn: Connection, older_than_seconds: float, final_statuses: Sequence[str], limit: int = 50_000
) -> int:
    """Re-arm wdk orders not in a final state whose last sync is older than the threshold."""
    result = conn.execute(
        sa.text(
            "INSERT INTO sync_queue (api, id_kind, key) "
            "SELECT 'wdk', 'biz', o.biz_order_id::text FROM wdk_orders o "
            "WHERE NOT (coalesce(o.order_status, '') = ANY(CAST(:final AS text[]))) "
            "AND o.synced_at < now() - make_interval(secs => :age) "
            "ORDER BY o.synced_at LIMIT :limit "
            "ON CONFLICT (api, id_kind, key) DO UPDATE SET state = 'pending', attempts = 0, "
            "not_found_checks = 0, next_attempt_at = now(), updated_at = now(), done_at = NULL "
            "WHERE sync_queue.state IN ('done', 'not_found', 'dead') "
            # an unchanged re-fetch moves only the queue row's done_at, not the order's synced_at
            "AND coalesce(sync_queue.done_at, '-infinity') < now() - make_interval(secs => :age)"
        ),
        {"final": list(final_statuses), "age": older_than_seconds, "limit": limit},
    )
    return int(result.rowcount)


def states_of(conn: Connection, api: str, id_kind: str, keys: Sequence[str]) -> dict[str, int]:
    """How many of ``keys`` are in each state (for a backfill's progress)."""
    rows = conn.execute(
        sa.text(
            "SELECT state, count(*) FROM sync_queue WHERE api = :api AND id_kind = :kind "
            "AND key = ANY(CAST(:keys AS text[])) GROUP BY state"
        ),
        {"api": api, "kind": id_kind, "keys": list(keys)},
    ).all()
    return {str(s): int(n) for s, n in rows}
