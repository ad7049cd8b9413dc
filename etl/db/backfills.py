"""Backfills (``backfills`` / ``backfill_ids``): the ids of one ``etl backfill`` file, so that
the backfill claims, resumes and counts its own ids, and nothing else, while sharing the queue
(and the workers) with everything else. A backfill is identified by the fingerprint of its ids (in
order): the same file given again resumes it."""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

CHUNK = 50_000  # ids per statement


def begin(conn: Connection, api: str, id_kind: str, source: str | None) -> int:
    """A new backfill (its fingerprint is set by :func:`finish` once its ids are read)."""
    return int(
        conn.execute(
            sa.text(
                "INSERT INTO backfills (api, id_kind, source, ids) VALUES (:api, :kind, :src, 0) "
                "RETURNING id"
            ),
            {"api": api, "kind": id_kind, "src": source},
        ).scalar_one()
    )


def add(conn: Connection, backfill_id: int, api: str, id_kind: str, keys: Sequence[str]) -> None:
    """Make the queued ``keys`` part of the backfill."""
    for start in range(0, len(keys), CHUNK):
        conn.execute(
            sa.text(
                "INSERT INTO backfill_ids (backfill_id, queue_id) "
                "SELECT :b, q.id FROM sync_queue q WHERE q.api = :api AND q.id_kind = :kind "
                "AND q.key = ANY(CAST(:keys AS text[])) ON CONFLICT DO NOTHING"
            ),
            {
                "b": backfill_id,
                "api": api,
                "kind": id_kind,
                "keys": list(keys[start : start + CHUNK]),
            },
        )


def finish(conn: Connection, backfill_id: int, fingerprint: str) -> tuple[int, bool]:
    """Seal the backfill with the fingerprint of its ids: when a backfill of the same ids exists
    (the same command run again), this one is folded into it. Returns (its id, resumed)."""
    existing = conn.execute(
        sa.text(
            "SELECT o.id FROM backfills o JOIN backfills n ON n.id = :b "
            "WHERE o.api = n.api AND o.id_kind = n.id_kind AND o.fingerprint = :fp"
        ),
        {"b": backfill_id, "fp": fingerprint},
    ).scalar_one_or_none()
    if existing is not None:
        conn.execute(
            sa.text(
                "INSERT INTO backfill_ids (backfill_id, queue_id) SELECT :old, queue_id "
                "FROM backfill_ids WHERE backfill_id = :b ON CONFLICT DO NOTHING"
            ),
            {"old": existing, "b": backfill_id},
        )
        conn.execute(sa.text("DELETE FROM backfills WHERE id = :b"), {"b": backfill_id})
        backfill_id = int(existing)
    conn.execute(
        sa.text(
            "UPDATE backfills SET fingerprint = :fp, last_run_at = now(), ids = "
            "(SELECT count(*) FROM backfill_ids WHERE backfill_id = :b) WHERE id = :b"
        ),
        {"b": backfill_id, "fp": fingerprint},
    )
    return backfill_id, existing is not None


def states(conn: Connection, backfill_id: int) -> dict[str, int]:
    """How many of the backfill's ids are in each state."""
    rows = conn.execute(
        sa.text(
            "SELECT q.state, count(*) FROM backfill_ids b JOIN sync_queue q ON q.id = b.queue_id "
            "WHERE b.backfill_id = :b GROUP BY q.state"
        ),
        {"b": backfill_id},
    ).all()
    return {str(s): int(n) for s, n in rows}
