"""Retention: finished queue rows, superseded order versions and ended runs older than their keep
period go, in small batches. Owns its SQL.

Everything runs on one connection holding a session advisory lock (a second process finds it
taken and skips), each batch its own short transaction that takes its rows with
``FOR UPDATE SKIP LOCKED``: a row another transaction holds is left for the next prune, never
waited for.

- ``sync_queue``: ``done``, ``dead`` and ``not_found`` with no re-check left (``next_attempt_at``
  NULL), finished (``done_at``) before the cutoff. Never ``pending``, ``leased``, ``failed`` or a
  ``not_found`` awaiting its re-check. An id that comes back is simply queued again (a fresh row).
- ``order_archive``: a version is *superseded* when a newer version of its order was fetched
  before the cutoff and the order row does not point at it (its hash is not the row's
  ``payload_hash``). The version an order row points at, and the newest version of an order, are
  never pruned, so ``etl_raw``, ``etl raw`` and ``etl replay`` keep working. A monthly partition
  entirely older than the cutoff that holds only superseded versions is dropped whole; in the
  others superseded versions are deleted a range of archive ids at a time, walked from a mark
  (the worker keeps the mark between its prunes, so it reads each version once).
- ``sync_runs``: runs that ended (any status but ``running``) before the cutoff.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from etl.db import partitions

log = logging.getLogger(__name__)

LOCK_PRUNE = 7301004  # advisory lock key: one prune at a time on a database
BATCH = 5000  # rows per statement (queue, runs); archive ids per statement (archive)

_QUEUE_FINISHED = (
    "state IN ('done', 'not_found', 'dead') AND done_at < :cutoff "
    "AND (state <> 'not_found' OR next_attempt_at IS NULL)"
)
_RUN_ENDED = "status <> 'running' AND coalesce(ended_at, heartbeat_at, started_at) < :cutoff"

# The version ``a`` is the one its order row points at.
_CURRENT = (
    "(EXISTS (SELECT 1 FROM wdk_orders o WHERE a.api = 'wdk' "
    "AND o.biz_order_id = CASE WHEN a.api = 'wdk' THEN a.order_key::bigint END "
    "AND o.payload_hash = a.payload_hash) "
    "OR EXISTS (SELECT 1 FROM omni_orders o WHERE a.api = 'omni' AND o.order_id = a.order_key "
    "AND o.payload_hash = a.payload_hash))"
)
# A newer version of a's order, fetched before the cutoff.
_NEWER = (
    "EXISTS (SELECT 1 FROM order_archive b WHERE b.api = a.api AND b.order_key = a.order_key "
    "AND b.fetched_at >= a.fetched_at AND (b.fetched_at, b.id) > (a.fetched_at, a.id) "
    "AND b.fetched_at < :cutoff)"
)
SUPERSEDED = f"a.fetched_at < :cutoff AND {_NEWER} AND NOT {_CURRENT}"


@dataclass(frozen=True)
class Keep:
    """Keep periods in days; 0 keeps forever."""

    queue_days: float = 90.0
    archive_days: float = 400.0
    runs_days: float = 400.0


@dataclass
class PruneReport:
    """What a prune removed (or, dry, would remove)."""

    dry_run: bool = False
    skipped: bool = False  # another process was pruning
    queue: int = 0
    archive: int = 0  # superseded versions, those in dropped partitions included
    partitions_dropped: list[str] = field(default_factory=list)
    partitions_created: list[str] = field(default_factory=list)
    runs: int = 0
    archive_mark: int = 0  # archive ids up to this one have been looked at
    seconds: float = 0.0

    def line(self) -> str:
        """One line for a log or a terminal (pure)."""
        if self.skipped:
            return "prune: skipped, another process is pruning"
        verb = "would remove" if self.dry_run else "removed"
        made = "would create" if self.dry_run else "created"
        dropped = (
            f" ({len(self.partitions_dropped)} partitions whole: "
            f"{', '.join(self.partitions_dropped)})"
            if self.partitions_dropped
            else ""
        )
        parts = f"; {made} partitions {', '.join(self.partitions_created)}" * bool(
            self.partitions_created
        )
        return (
            f"prune: {verb} sync_queue {self.queue} finished rows, order_archive {self.archive} "
            f"superseded versions{dropped}, sync_runs {self.runs} ended runs{parts}; "
            f"{self.seconds:.1f}s"
        )


def cutoff(days: float, now: datetime | None = None) -> datetime | None:
    """The instant before which rows kept ``days`` may go; None when kept forever."""
    if days <= 0:
        return None
    return (now or datetime.now(UTC)) - timedelta(days=days)


Stop = Callable[[], bool]  # asked between batches: True ends the prune there (a worker stops)


def _never() -> bool:
    return False


def _batches(conn: Connection, stmt: str, params: Mapping[str, object], stop: Stop) -> int:
    """Run the delete ``stmt`` (LIMIT :n) until it deletes less than a batch (or ``stop``); one
    transaction each. A ``stmt`` returning a row returns how many it deleted."""
    total = 0
    while not stop():
        with conn.begin():
            result = conn.execute(sa.text(stmt), {**params, "n": BATCH})
            n = int(result.scalar_one()) if result.returns_rows else result.rowcount
        total += n
        if n < BATCH:
            return total
    return total


def _count(conn: Connection, stmt: str, params: Mapping[str, object]) -> int:
    with conn.begin():
        return int(conn.execute(sa.text(stmt), params).scalar_one())


def _prune_rows(
    conn: Connection,
    table: str,
    where: str,
    before: datetime,
    dry_run: bool,
    stop: Stop,
    then: str = "",
) -> int:
    """Delete (or count) the rows of ``table`` matching ``where``, a batch at a time; ``then``
    (statements on ``gone``, the ids deleted) runs in the same statement."""
    params = {"cutoff": before}
    if dry_run:
        return _count(conn, f"SELECT count(*) FROM {table} WHERE {where}", params)
    delete = (
        f"DELETE FROM {table} WHERE id IN (SELECT id FROM {table} WHERE {where} "
        "LIMIT :n FOR UPDATE SKIP LOCKED)"
    )
    if then:
        delete = f"WITH gone AS ({delete} RETURNING id), {then} SELECT count(*) FROM gone"
    return _batches(conn, delete, params, stop)


def prune_queue(conn: Connection, before: datetime, dry_run: bool, stop: Stop = _never) -> int:
    """Finished queue rows, and their membership in backfills (``backfill_ids`` has no foreign
    key to cascade it: migration 0010)."""
    members = "m AS (DELETE FROM backfill_ids WHERE queue_id IN (SELECT id FROM gone))"
    return _prune_rows(conn, "sync_queue", _QUEUE_FINISHED, before, dry_run, stop, then=members)


def prune_runs(conn: Connection, before: datetime, dry_run: bool, stop: Stop = _never) -> int:
    return _prune_rows(conn, "sync_runs", _RUN_ENDED, before, dry_run, stop)


def _droppable(conn: Connection, part: partitions.Partition, before: datetime) -> int | None:
    """Rows of ``part`` if it lies wholly before the cutoff and holds only superseded
    versions (it may be dropped whole); else None."""
    if part.end is None or part.end > before:
        return None
    with conn.begin():
        kept = conn.execute(
            sa.text(f"SELECT EXISTS (SELECT 1 FROM {part.name} a WHERE NOT ({SUPERSEDED}))"),
            {"cutoff": before},
        ).scalar_one()
        if kept:
            return None
        return int(conn.execute(sa.text(f"SELECT count(*) FROM {part.name}")).scalar_one())


def drop_partitions(conn: Connection, before: datetime, report: PruneReport) -> None:
    with conn.begin():
        parts = partitions.list_partitions(conn)
    for part in parts:
        rows = _droppable(conn, part, before)
        if rows is None:
            continue
        if not report.dry_run:
            try:
                with conn.begin():
                    partitions.drop(conn, part.name)
            except sa.exc.OperationalError as exc:  # its lock was not granted in time
                log.warning("prune: %s not dropped this time: %s", part.name, exc.orig)
                continue
        report.partitions_dropped.append(part.name)
        report.archive += rows


_DELETE_SUPERSEDED = (
    # the predecessors (not pointed at) of the versions with ids in (lo, hi] fetched before the
    # cutoff: each version is looked at once, through the (api, order_key, fetched_at) index
    "DELETE FROM order_archive d WHERE (d.id, d.fetched_at) IN ("
    "SELECT a.id, a.fetched_at FROM order_archive b JOIN order_archive a "
    "ON a.api = b.api AND a.order_key = b.order_key AND a.fetched_at <= b.fetched_at "
    "AND (a.fetched_at, a.id) < (b.fetched_at, b.id) "
    f"WHERE b.id > :lo AND b.id <= :hi AND b.fetched_at < :cutoff AND NOT {_CURRENT} "
    "FOR UPDATE OF a SKIP LOCKED)"
)


def prune_archive_rows(
    conn: Connection, before: datetime, mark: int, stop: Stop = _never
) -> tuple[int, int]:
    """Delete superseded versions, walking archive ids from ``mark`` up to the first version
    fetched after the cutoff (or ``stop``). Returns (deleted, the new mark)."""
    with conn.begin():
        top = conn.execute(sa.text("SELECT max(id) FROM order_archive")).scalar()
    deleted = 0
    while top is not None and mark < top and not stop():
        hi = min(mark + BATCH, top)
        with conn.begin():
            young = conn.execute(
                sa.text(
                    "SELECT min(id) FROM order_archive "
                    "WHERE id > :lo AND id <= :hi AND fetched_at >= :cutoff"
                ),
                {"lo": mark, "hi": hi, "cutoff": before},
            ).scalar()
            if young is not None:
                hi = young - 1
            if hi > mark:
                deleted += conn.execute(
                    sa.text(_DELETE_SUPERSEDED), {"lo": mark, "hi": hi, "cutoff": before}
                ).rowcount
        mark = hi
        if young is not None:
            break
    return deleted, mark


def prune_archive(
    conn: Connection, before: datetime, report: PruneReport, mark: int, stop: Stop = _never
) -> None:
    drop_partitions(conn, before, report)
    if report.dry_run:
        report.archive = _count(
            conn, f"SELECT count(*) FROM order_archive a WHERE {SUPERSEDED}", {"cutoff": before}
        )
        report.archive_mark = mark
        return
    deleted, report.archive_mark = prune_archive_rows(conn, before, mark, stop)
    report.archive += deleted


def ensure_partitions(conn: Connection, report: PruneReport) -> None:
    try:
        with conn.begin():
            if report.dry_run:
                report.partitions_created = partitions.missing_ahead(conn)
            else:
                report.partitions_created = partitions.ensure_ahead(conn)
    except sa.exc.OperationalError as exc:  # a lock not granted in time: next prune; the
        # default partition takes the rows meanwhile, and the prune itself goes on
        log.warning("prune: partitions not created this time: %s", exc.orig)


def prune(
    engine: Engine,
    keep: Keep,
    *,
    dry_run: bool = False,
    archive_mark: int = 0,
    now: datetime | None = None,
    stop: Stop = _never,
) -> PruneReport:
    """Prune once under the advisory lock (skipped if another process holds it); also creates
    order_archive's partitions ahead. ``archive_mark``: archive ids up to it were looked at by an
    earlier prune of this process (0: look at them all). ``stop`` is asked between batches."""
    started = time.monotonic()
    report = PruneReport(dry_run=dry_run, archive_mark=archive_mark)
    with engine.connect() as conn:
        with conn.begin():
            got = conn.execute(
                sa.text("SELECT pg_try_advisory_lock(:k)"), {"k": LOCK_PRUNE}
            ).scalar_one()
        if not got:
            report.skipped = True
            return report
        try:
            ensure_partitions(conn, report)
            if (before := cutoff(keep.queue_days, now)) is not None:
                report.queue = prune_queue(conn, before, dry_run, stop)
            if (before := cutoff(keep.archive_days, now)) is not None:
                prune_archive(conn, before, report, archive_mark, stop)
            if (before := cutoff(keep.runs_days, now)) is not None:
                report.runs = prune_runs(conn, before, dry_run, stop)
        finally:
            if conn.in_transaction():
                conn.rollback()
            with conn.begin():
                conn.execute(sa.text("SELECT pg_advisory_unlock(:k)"), {"k": LOCK_PRUNE})
    report.seconds = time.monotonic() - started
    return report
