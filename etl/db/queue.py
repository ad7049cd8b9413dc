"""The work queue in ``sync_queue``: enqueue, claim, ack, release, requeue. Owns its SQL.

One row per (api, id kind, key). Workers claim batches with ``FOR UPDATE SKIP LOCKED`` and a
lease (committed at once, so the fetch holds no transaction); the outcome of a batch is acked in
the same transaction as its load, and only while the lease is still ours. A crashed worker's
lease expires and the rows are claimed again; the load is idempotent, so nothing is lost or
duplicated.

States: ``pending`` → ``leased`` → ``done`` | ``not_found`` | ``failed`` (retried later with
backoff) → ``dead`` (after ``max_attempts``, or at once for a permanent error on an id isolated
by splitting). An id is ``not_found`` from its first not-found answer; while re-checks remain
(``not_found_checks``; orders can appear late) its ``next_attempt_at`` is the next re-check and a
claim takes it from that state. ``next_attempt_at`` is NULL once a row will never be claimed again.
A credentials rejection or a ban releases the claimed ids untouched (back to ``pending``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from etl.db.arrays import number_array, text_array

CLAIMABLE = ("pending", "failed", "not_found")  # when next_attempt_at is due
FINAL = ("done", "not_found", "dead")  # answered (a not_found may still be re-checked)
STATES = ("pending", "leased", "failed", "not_found", "done", "dead")


@dataclass(frozen=True)
class Item:
    id: int
    api: str
    id_kind: str
    key: str
    attempts: int
    not_found_checks: int
    prior_state: str = "pending"  # the state it was claimed from (restored by a release)

    @property
    def queued(self) -> bool:
        """False for an id a lone backfill handed over before queueing it (etl.handoff): it
        has no row until :func:`record_handed` writes one with its outcome."""
        return self.id > 0


@dataclass(frozen=True)
class Outcome:
    """What happened to one claimed item: ``done``, ``not_found``, ``failed`` or ``dead`` (a
    permanent error: no retry can help)."""

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


PRIORITY_LIVE = 0  # ids from messages, refreshes of open orders, ids queued by hand
PRIORITY_BULK = 10  # a backfill: served when no live id is due


_REARM = (
    "state = 'pending', attempts = 0, not_found_checks = 0, "
    "next_attempt_at = now(), last_error_class = NULL, last_error = NULL, "
    "updated_at = now(), done_at = NULL, priority = excluded.priority"
)
_REARMABLE = "WHERE q.state IN ('done', 'not_found', 'dead', 'failed')"  # INSERT ... AS q


def enqueue(
    conn: Connection,
    api: str,
    id_kind: str,
    keys: Sequence[str],
    *,
    refresh: bool = False,
    priority: int = PRIORITY_LIVE,
) -> int:
    """Queue ``keys`` at ``priority``; an id already queued is left alone, or re-armed
    (``refresh``) when it has finished. Returns how many rows were added or re-armed. An id still
    waiting takes ``priority`` when it is more urgent (lower) than its own."""
    conflict = f"DO UPDATE SET {_REARM} {_REARMABLE}" if refresh else "DO NOTHING"
    total = 0
    for chunk in _chunks(keys):
        params = {"api": api, "kind": id_kind, "keys": text_array(chunk), "prio": priority}
        result = conn.execute(
            sa.text(
                "INSERT INTO sync_queue AS q (api, id_kind, key, priority) "
                "SELECT :api, :kind, k, :prio FROM unnest(CAST(:keys AS text[])) AS k "
                f"ON CONFLICT (api, id_kind, key) {conflict}"
            ),
            params,
        )
        total += result.rowcount
        _raise_priority(conn, params)
    return total


def _chunks(keys: Sequence[str], size: int = 50_000) -> Iterator[list[str]]:
    for start in range(0, len(keys), size):
        yield list(keys[start : start + size])


def _raise_priority(conn: Connection, params: dict[str, Any]) -> None:
    """Ids still waiting take ``params["prio"]`` when it is more urgent than their own."""
    if params["prio"] < PRIORITY_BULK:  # nothing waits at a priority below bulk's
        conn.execute(
            sa.text(
                "UPDATE sync_queue SET priority = :prio WHERE api = :api AND id_kind = :kind "
                "AND key = ANY(CAST(:keys AS text[])) AND priority > :prio "
                "AND state IN ('pending', 'leased', 'failed')"
            ),
            params,
        )


def known(conn: Connection, api: str, id_kind: str, keys: Sequence[str]) -> set[str]:
    """Those of ``keys`` that have a row."""
    found: set[str] = set()
    for chunk in _chunks(keys):
        found.update(
            conn.execute(
                sa.text(
                    "SELECT key FROM sync_queue WHERE api = :api AND id_kind = :kind "
                    "AND key = ANY(CAST(:keys AS text[]))"
                ),
                {"api": api, "kind": id_kind, "keys": text_array(chunk)},
            ).scalars()
        )
    return found


def record_handed(
    conn: Connection,
    outcomes: Sequence[Outcome],
    policy: Policy,
    run_id: int | None,
    backfill: int | None,
    priority: int = PRIORITY_BULK,
) -> int:
    """Write the rows of ids a lone backfill handed over unqueued (etl.handoff), each in the
    state its outcome leaves it in, as part of ``backfill``: one write an id. An id another
    process queued meanwhile keeps its row as it is (it is fetched again; the load is
    idempotent) and joins the backfill. Runs in the caller's transaction (the one that loaded
    the orders); returns how many rows it wrote."""
    if not outcomes:
        return 0
    outcomes = sorted(outcomes, key=lambda o: (o.item.api, o.item.id_kind, o.item.key))
    params = {
        "apis": text_array(o.item.api for o in outcomes),
        "kinds": text_array(o.item.id_kind for o in outcomes),
        "keys": text_array(o.item.key for o in outcomes),
        **_planned(outcomes, policy),
        "prio": priority,
        "run": run_id,
        "backfill": backfill,
    }
    try:  # the usual case, no row exists: a plain insert (ON CONFLICT costs ~4 us a row more)
        with conn.begin_nested():
            return int(
                conn.execute(
                    sa.text(_HANDED.format(conflict="", out="count(*)")), params
                ).scalar_one()
            )
    except sa.exc.IntegrityError:  # another process queued some of them meanwhile
        pass
    written = conn.execute(
        sa.text(_HANDED.format(conflict=_KEEP_THEIRS, out="api, id_kind, key")), params
    ).all()
    if len(written) < len(outcomes) and backfill is not None:
        mine = {tuple(row) for row in written}
        _join(conn, backfill, [o.item for o in outcomes if _ident(o.item) not in mine])
    return len(written)


# The rows of handed ids (see record_handed), written in the state their outcome leaves, and
# their membership in the backfill (new rows: no membership can exist yet).
_HANDED = (
    "WITH v AS (SELECT * FROM unnest(CAST(:apis AS text[]), CAST(:kinds AS text[]), "
    "CAST(:keys AS text[]), CAST(:states AS text[]), CAST(:attempts AS int[]), "
    "CAST(:checks AS int[]), CAST(:delays AS float8[]), CAST(:classes AS text[]), "
    "CAST(:errs AS text[])) "
    "AS v(api, kind, key, state, attempts, checks, delay, err_class, err)), "
    "ins AS (INSERT INTO sync_queue AS q (api, id_kind, key, priority, state, attempts, "
    "not_found_checks, next_attempt_at, last_error_class, last_error, run_id, done_at) "
    "SELECT api, kind, key, :prio, state, attempts, checks, "
    "now() + make_interval(secs => delay), err_class, err, :run, "  # NULL delay: never
    "CASE WHEN state IN ('done', 'not_found', 'dead') THEN now() END FROM v "
    "ORDER BY api, kind, key {conflict} RETURNING q.id, q.api, q.id_kind, q.key), "
    "m AS (INSERT INTO backfill_ids (backfill_id, queue_id) "
    "SELECT CAST(:backfill AS bigint), id FROM ins WHERE CAST(:backfill AS bigint) IS NOT NULL) "
    "SELECT {out} FROM ins"
)
_KEEP_THEIRS = "ON CONFLICT (api, id_kind, key) DO NOTHING"


def queue_handed(
    conn: Connection, items: Sequence[Item], backfill: int | None, priority: int = PRIORITY_BULK
) -> int:
    """Queue (``pending``, for every process) ids a backfill handed over but did not fetch
    (the drain ended first, or another process shares the app key now), as part of
    ``backfill``. Returns how many rows were added."""
    added = 0
    for (api, id_kind), keys in _by_kind(items).items():
        added += enqueue(conn, api, id_kind, keys, priority=priority)
    if backfill is not None:
        _join(conn, backfill, items)
    return added


def _ident(item: Item) -> tuple[str, str, str]:
    return item.api, item.id_kind, item.key


def _by_kind(items: Sequence[Item]) -> dict[tuple[str, str], list[str]]:
    out: dict[tuple[str, str], list[str]] = {}
    for item in items:
        out.setdefault((item.api, item.id_kind), []).append(item.key)
    return out


def _join(conn: Connection, backfill: int, items: Sequence[Item]) -> None:
    """Make the rows of ``items`` part of ``backfill``."""
    for (api, id_kind), keys in _by_kind(items).items():
        for chunk in _chunks(keys):
            conn.execute(
                sa.text(
                    "INSERT INTO backfill_ids (backfill_id, queue_id) SELECT :b, id "
                    "FROM sync_queue WHERE api = :api AND id_kind = :kind "
                    "AND key = ANY(CAST(:keys AS text[])) ON CONFLICT DO NOTHING"
                ),
                {"b": backfill, "api": api, "kind": id_kind, "keys": text_array(chunk)},
            )


# Restricts a statement on sync_queue to the rows of one backfill.
_IN_BACKFILL = " AND id IN (SELECT queue_id FROM backfill_ids WHERE backfill_id = :backfill)"


# The two ways a row is claimable, each its own statement so that each reads an index in the
# order it claims (never sorting the backlog): due rows through the partial index
# ix_sync_queue_due_priority (api, priority, next_attempt_at, id), and leases whose holder died.
_DUE = (
    "state IN ('pending', 'failed', 'not_found') AND next_attempt_at <= now() "
    "ORDER BY priority, next_attempt_at, id"
)
_EXPIRED = "state = 'leased' AND leased_until < now() ORDER BY leased_until, id"


def claim(
    conn: Connection,
    api: str,
    limit: int,
    lease_seconds: float,
    worker: str,
    run_id: int | None,
    backfill: int | None = None,
    *,
    expired: bool = True,
) -> list[Item]:
    """Lease up to ``limit`` items of ``api``: leases whose holder died first (unless not
    ``expired``: a caller claiming often looks for those now and then), then due items, most
    urgent priority first, then the longest due — only those of backfill ``backfill`` when
    given; the caller commits. Costs the same at any backlog (see ``_DUE``)."""
    items = []
    if expired:
        items = _claim(conn, _EXPIRED, api, limit, lease_seconds, worker, run_id, backfill)
    if len(items) < limit:
        items += _claim(
            conn, _DUE, api, limit - len(items), lease_seconds, worker, run_id, backfill
        )
    return sorted(items, key=lambda i: i.id)


def _claim(
    conn: Connection,
    which: str,
    api: str,
    limit: int,
    lease_seconds: float,
    worker: str,
    run_id: int | None,
    backfill: int | None,
) -> list[Item]:
    where, order = which.split(" ORDER BY ")
    scope = _IN_BACKFILL if backfill is not None else ""
    rows = conn.execute(
        sa.text(
            f"WITH c AS (SELECT id, state AS prior FROM sync_queue WHERE api = :api AND {where}"
            f"{scope} ORDER BY {order} LIMIT :limit FOR UPDATE SKIP LOCKED) "
            "UPDATE sync_queue q SET state = 'leased', leased_until = now() + make_interval("
            "secs => :lease), leased_by = :worker, run_id = :run, updated_at = now() "
            "FROM c WHERE q.id = c.id "
            "RETURNING q.id, q.api, q.id_kind, q.key, q.attempts, q.not_found_checks, "
            "CASE WHEN c.prior = 'leased' THEN 'pending' ELSE c.prior END"
        ),
        {
            "api": api,
            "limit": limit,
            "lease": lease_seconds,
            "worker": worker,
            "run": run_id,
            "backfill": backfill,
        },
    ).all()
    return [Item(*row) for row in rows]


# Rows of the ids given (``:ids``) still leased by ``:worker``. Written so that no estimate can
# make an ack walk more than its own rows (measured, 4 lanes, 20,000-id backfill: acks of 400
# ids took 60-500 ms, ~8 ms by key):
# - ``q.id = ANY(:ids)``: the rows are found by primary key (or a scan filtered by the ids);
#   the planner, believing few rows are leased by this worker, otherwise scanned the table and
#   re-evaluated the ``unnest`` of every array once per leased row (a nested loop);
# - ``q.state || ''``: not answerable from ix_sync_queue_state_next_attempt_at, whose 'leased'
#   entries are every lease taken since the last vacuum.
_OURS = "q.id = ANY(CAST(:ids AS bigint[])) AND q.leased_by = :worker AND q.state || '' = 'leased'"


def _plan(outcome: Outcome, policy: Policy) -> tuple[str, int, int, float | None]:
    """(state, attempts, not_found_checks, delay until claimable; None = never) after
    ``outcome``."""
    item = outcome.item
    if outcome.result == "done":
        return "done", item.attempts, item.not_found_checks, None
    if outcome.result == "not_found":
        checks = item.not_found_checks + 1
        if checks >= policy.not_found_checks:
            return "not_found", item.attempts, checks, None
        return "not_found", item.attempts, checks, policy.recheck_delay(checks)
    attempts = item.attempts + 1
    if outcome.result == "dead" or attempts >= policy.max_attempts:
        return "dead", attempts, item.not_found_checks, None
    return "failed", attempts, item.not_found_checks, policy.retry_delay(attempts)


def _planned(outcomes: Sequence[Outcome], policy: Policy) -> dict[str, str]:
    """The statement parameters (one array literal each) of the rows ``outcomes`` leave."""
    plans = [_plan(o, policy) for o in outcomes]
    return {
        "states": text_array(p[0] for p in plans),
        "attempts": number_array(p[1] for p in plans),
        "checks": number_array(p[2] for p in plans),
        "delays": number_array(p[3] for p in plans),
        "classes": text_array(o.error_class for o in outcomes),
        "errs": text_array((o.error or "")[:2000] or None for o in outcomes),
    }


def settles(outcome: Outcome, policy: Policy) -> bool:
    """Whether ``outcome`` leaves the id answered (done, not found, dead) rather than retried."""
    return _plan(outcome, policy)[0] in FINAL


def ack(conn: Connection, outcomes: Sequence[Outcome], policy: Policy, worker: str) -> int:
    """Record outcomes of items still leased by ``worker``; returns how many were recorded.

    Runs in the caller's transaction (the one that loaded the orders).
    """
    if not outcomes:
        return 0
    done = [o.item.id for o in outcomes if o.result == "done"]
    acked = 0
    if done:  # most outcomes: one statement, no per-row values (attempts and checks unchanged)
        acked += conn.execute(
            sa.text(
                "UPDATE sync_queue q SET state = 'done', next_attempt_at = NULL, "
                "last_error_class = NULL, last_error = NULL, leased_until = NULL, "
                "updated_at = now(), done_at = now() WHERE " + _OURS
            ),
            {"ids": number_array(done), "worker": worker},
        ).rowcount
    outcomes = [o for o in outcomes if o.result != "done"]  # each with its own values
    if not outcomes:
        return acked
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue q SET state = v.state, attempts = v.attempts, "
            "not_found_checks = v.checks, "
            "next_attempt_at = now() + make_interval(secs => v.delay), "  # NULL delay: never
            "last_error_class = v.err_class, last_error = v.err, leased_until = NULL, "
            "updated_at = now(), "
            "done_at = CASE WHEN v.state IN ('done', 'not_found', 'dead') THEN now() END "
            "FROM (SELECT unnest(CAST(:ids AS bigint[])) AS id, unnest(CAST(:states AS text[])) "
            "AS state, unnest(CAST(:attempts AS int[])) AS attempts, "
            "unnest(CAST(:checks AS int[])) AS checks, unnest(CAST(:delays AS float8[])) AS delay, "
            "unnest(CAST(:classes AS text[])) AS err_class, "
            "unnest(CAST(:errs AS text[])) AS err) v "
            "WHERE q.id = v.id AND " + _OURS
        ),
        {
            "ids": number_array(o.item.id for o in outcomes),
            **_planned(outcomes, policy),
            "worker": worker,
        },
    )
    return acked + int(result.rowcount)


def release(
    conn: Connection,
    items: Sequence[Item],
    worker: str,
    not_before: datetime | None = None,
    reason: str | None = None,
) -> int:
    """Give leased items back untouched (no attempt used, the state they were claimed from),
    due again at ``not_before``."""
    if not items:
        return 0
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue q SET state = v.prior, leased_until = NULL, updated_at = now(), "
            "next_attempt_at = GREATEST(now(), COALESCE(CAST(:nb AS timestamptz), now())), "
            "last_error = COALESCE(CAST(:reason AS text), q.last_error) "
            "FROM (SELECT unnest(CAST(:ids AS bigint[])) AS id, "
            "unnest(CAST(:priors AS text[])) AS prior) v "
            "WHERE q.id = v.id AND " + _OURS
        ),
        {
            "ids": number_array(i.id for i in items),
            "priors": text_array(i.prior_state for i in items),
            "nb": not_before,
            "worker": worker,
            "reason": reason,
        },
    )
    return int(result.rowcount)


def release_worker(conn: Connection, worker: str) -> int:
    """Every lease ``worker`` still holds back to pending at once (a hard stop)."""
    result = conn.execute(
        sa.text(
            "UPDATE sync_queue SET state = CASE WHEN not_found_checks > 0 AND attempts = 0 "
            "THEN 'not_found' ELSE 'pending' END, leased_until = NULL, updated_at = now(), "
            "next_attempt_at = now() WHERE state = 'leased' AND leased_by = :worker"
        ),
        {"worker": worker},
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
    """Rows per (api, state): how many, how many are due now, since when the oldest due one has
    waited, and when the next not-yet-due one falls due (re-checks, retries)."""
    rows = conn.execute(
        sa.text(
            "SELECT api, state, count(*) AS n, "
            "count(*) FILTER (WHERE next_attempt_at <= now() AND state <> 'leased' "
            "  OR state = 'leased' AND leased_until < now()) AS due, "
            "min(next_attempt_at) FILTER (WHERE next_attempt_at <= now() "
            "  AND state <> 'leased') AS oldest_due, "
            "min(next_attempt_at) FILTER (WHERE next_attempt_at > now()) AS next_at, "
            "max(leased_until) FILTER (WHERE state = 'leased') AS lease_until "
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
                "AND ((state IN ('pending', 'failed', 'not_found') AND next_attempt_at <= now()) "
                "OR (state = 'leased' AND leased_until < now()))"
            ),
            {"api": api},
        ).scalar_one()
    )


def next_due(
    conn: Connection, within: timedelta, api: str | None = None, backfill: int | None = None
) -> datetime | None:
    """When the next pending / failed / re-checked item falls due (or a lease expires), if within
    ``within`` — of one backfill's items when ``backfill`` is given."""
    value = conn.execute(
        sa.text(
            "SELECT min(CASE WHEN state = 'leased' THEN leased_until ELSE next_attempt_at END) "
            "FROM sync_queue WHERE state IN ('pending', 'failed', 'not_found', 'leased') "
            "AND (CAST(:api AS text) IS NULL OR api = :api) "
            "AND CASE WHEN state = 'leased' THEN leased_until ELSE next_attempt_at END "
            "<= now() + make_interval(secs => :within)"
            f"{_IN_BACKFILL if backfill is not None else ''}"
        ),
        {"api": api, "within": within.total_seconds(), "backfill": backfill},
    ).scalar_one()
    return value if isinstance(value, datetime) else None


def refresh_open(
    conn: Connection, older_than_seconds: float, final_statuses: Sequence[str], limit: int = 50_000
) -> int:
    """Re-arm wdk orders not in a final state whose last sync is older than the threshold (at
    live priority: they are today's business)."""
    result = conn.execute(
        sa.text(
            "INSERT INTO sync_queue (api, id_kind, key, priority) "
            "SELECT 'wdk', 'biz', o.biz_order_id::text, :prio FROM wdk_orders o "
            "WHERE NOT (coalesce(o.order_status, '') = ANY(CAST(:final AS text[]))) "
            "AND o.synced_at < now() - make_interval(secs => :age) "
            "ORDER BY o.synced_at LIMIT :limit "
            "ON CONFLICT (api, id_kind, key) DO UPDATE SET state = 'pending', attempts = 0, "
            "not_found_checks = 0, next_attempt_at = now(), updated_at = now(), done_at = NULL, "
            "priority = excluded.priority WHERE sync_queue.state IN ('done', 'not_found', 'dead') "
            # an unchanged re-fetch moves only the queue row's done_at, not the order's synced_at
            "AND coalesce(sync_queue.done_at, '-infinity') < now() - make_interval(secs => :age)"
        ),
        {
            "final": list(final_statuses),
            "age": older_than_seconds,
            "limit": limit,
            "prio": PRIORITY_LIVE,
        },
    )
    return int(result.rowcount)


def by_state(
    conn: Connection, states: Sequence[str], api: str | None = None, limit: int | None = 1000
) -> list[dict[str, Any]]:
    """Ids in ``states`` with their last error and next attempt, oldest change first."""
    rows = conn.execute(
        sa.text(
            "SELECT api, id_kind, key, state, attempts, not_found_checks, next_attempt_at, "
            "last_error_class, last_error, updated_at FROM sync_queue "
            "WHERE state = ANY(CAST(:states AS text[])) "
            "AND (CAST(:api AS text) IS NULL OR api = :api) "
            "ORDER BY updated_at, id LIMIT :limit"
        ),
        {"states": list(states), "api": api, "limit": limit},
    ).mappings()
    return [dict(r) for r in rows]


def rechecks_pending(conn: Connection) -> dict[str, int]:
    """Per api: not-found ids that will be asked for again (a re-check is scheduled)."""
    rows = conn.execute(
        sa.text(
            "SELECT api, count(*) FROM sync_queue WHERE state = 'not_found' "
            "AND next_attempt_at IS NOT NULL GROUP BY api"
        )
    ).all()
    return {str(a): int(n) for a, n in rows}
