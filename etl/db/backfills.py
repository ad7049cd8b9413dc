"""Backfills (``backfills`` / ``backfill_ids``): the ids of one ``etl backfill`` file, so that
the backfill claims, resumes and counts its own ids, and nothing else, while sharing the queue
(and the workers) with everything else. A backfill is identified by the fingerprint of its ids (in
order): the same file given again resumes it, also when a previous run was stopped before all
its ids were queued."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from etl.db.arrays import text_array

CHUNK = 50_000  # ids per statement


def begin(
    conn: Connection, api: str, id_kind: str, source: str | None, fingerprint: str, ids: int
) -> tuple[int, bool, datetime]:
    """The backfill of these ids (by ``fingerprint``): a new one, or the one a previous run of
    the same ids left (resumed). Returns (its id, resumed, the database's time now — ids
    finished before it count as already finished)."""
    row = conn.execute(
        sa.text(
            "INSERT INTO backfills (api, id_kind, source, fingerprint, ids) "
            "VALUES (:api, :kind, :src, :fp, :ids) "
            "ON CONFLICT (api, id_kind, fingerprint) DO UPDATE SET last_run_at = now(), "
            "source = excluded.source RETURNING id, xmax <> 0, now()"
        ),
        {"api": api, "kind": id_kind, "src": source, "fp": fingerprint, "ids": ids},
    ).one()
    return int(row[0]), bool(row[1]), row[2]


def add(
    conn: Connection,
    backfill_id: int,
    api: str,
    id_kind: str,
    keys: Sequence[str],
    since: datetime,
) -> int:
    """Make the queued ``keys`` part of the backfill. Returns how many of them had finished
    before ``since`` (before this run of the backfill began)."""
    finished = 0
    for start in range(0, len(keys), CHUNK):
        finished += int(
            conn.execute(
                sa.text(
                    "WITH q AS (SELECT id, state, done_at FROM sync_queue WHERE api = :api "
                    "AND id_kind = :kind AND key = ANY(CAST(:keys AS text[]))), "
                    "m AS (INSERT INTO backfill_ids (backfill_id, queue_id) "
                    "SELECT :b, id FROM q ON CONFLICT DO NOTHING) "
                    "SELECT count(*) FROM q WHERE state IN ('done', 'not_found', 'dead') "
                    "AND coalesce(done_at, '-infinity') < :since"
                ),
                {
                    "b": backfill_id,
                    "api": api,
                    "kind": id_kind,
                    "keys": text_array(keys[start : start + CHUNK]),
                    "since": since,
                },
            ).scalar_one()
        )
    return finished


def seal(conn: Connection, backfill_id: int) -> None:
    """Record how many ids the backfill holds, once all are in (memberships whose queue row is
    gone — deleted by hand: ``backfill_ids`` has no foreign key — are not counted)."""
    conn.execute(
        sa.text(
            "UPDATE backfills SET ids = (SELECT count(*) FROM backfill_ids b "
            "JOIN sync_queue q ON q.id = b.queue_id WHERE b.backfill_id = :b) WHERE id = :b"
        ),
        {"b": backfill_id},
    )
