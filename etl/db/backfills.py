"""Backfills (``backfills`` / ``backfill_ids``): the ids of one ``etl backfill`` file, so that
the backfill claims, resumes and counts its own ids, and nothing else, while sharing the queue
(and the workers) with everything else."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.engine import Connection

CHUNK = 50_000  # ids per statement


def fingerprint(api: str, id_kind: str, keys: Sequence[str]) -> str:
    """The same set of ids gives the same backfill, whatever their order or the file's name."""
    digest = hashlib.sha256(f"{api}\n{id_kind}\n".encode())
    for key in sorted(set(keys)):
        digest.update(key.encode() + b"\n")
    return digest.hexdigest()


def register(
    conn: Connection, api: str, id_kind: str, keys: Sequence[str], source: str | None
) -> tuple[int, bool]:
    """The backfill of ``keys`` (already queued): (its id, whether it existed before)."""
    fp = fingerprint(api, id_kind, keys)
    row = conn.execute(
        sa.text(
            "INSERT INTO backfills (api, id_kind, fingerprint, source, ids) "
            "VALUES (:api, :kind, :fp, :source, :n) ON CONFLICT (api, id_kind, fingerprint) "
            "DO UPDATE SET last_run_at = now(), source = EXCLUDED.source "
            "RETURNING id, (xmax <> 0) AS existed"
        ),
        {"api": api, "kind": id_kind, "fp": fp, "source": source, "n": len(set(keys))},
    ).one()
    backfill_id, existed = int(row[0]), bool(row[1])
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
    return backfill_id, existed


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
