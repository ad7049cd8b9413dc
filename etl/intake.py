"""Ids into the queue from arguments, a file or standard input — streamed: validated and queued a
chunk at a time inside the caller's transaction, so a file of ten million ids takes bounded memory
and a bad line still means nothing is queued (unless ``skip_invalid``)."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy.engine import Connection

from etl import errors, ids
from etl.db import backfills, queue

SHOWN_ERRORS = 20  # bad lines quoted in the error message
PROGRESS_SECONDS = 5.0


@dataclass
class Intake:
    """What reading an input did."""

    lines: int = 0
    ids: int = 0
    added: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)  # the first SHOWN_ERRORS
    bad_lines: int = 0
    fingerprint: str = ""  # sha256 of the ids in order (a backfill's identity)


Progress = Callable[[Intake], None]


def queue_ids(
    conn: Connection,
    api: str,
    id_kind: str,
    lines: Iterable[str],
    where: str,
    *,
    refresh: bool = False,
    skip_invalid: bool = False,
    backfill: int | None = None,
    priority: int = queue.PRIORITY_LIVE,
    progress: Progress | None = None,
    chunk_size: int = ids.CHUNK,
) -> Intake:
    """Validate and queue the ids of ``lines`` (and add them to ``backfill``). Raises
    :class:`errors.InputError` — the caller's transaction then rolls everything back — when a
    line is bad (unless ``skip_invalid``) or there is no id at all."""
    out = Intake()
    digest = hashlib.sha256(f"{api}\n{id_kind}\n".encode())
    last_report = time.monotonic()
    for chunk in ids.chunks(lines, api, id_kind, where, chunk_size):
        out.lines = chunk.lines
        out.bad_lines += len(chunk.errors)
        out.errors.extend(chunk.errors[: SHOWN_ERRORS - len(out.errors)])
        out.ids += len(chunk.keys)
        out.duplicates += chunk.duplicates
        for key in chunk.keys:
            digest.update(key.encode() + b"\n")
        if out.bad_lines and not skip_invalid:
            continue  # keep reading, to say how many lines are bad; nothing will be queued
        out.added += queue.enqueue(
            conn, api, id_kind, chunk.keys, refresh=refresh, priority=priority
        )
        if backfill is not None:
            backfills.add(conn, backfill, api, id_kind, chunk.keys)
        if progress and time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            progress(out)
    out.fingerprint = digest.hexdigest()
    if out.bad_lines and not skip_invalid:
        shown = "\n  ".join(out.errors)
        more = out.bad_lines - len(out.errors)
        tail = f"\n  ... and {more} more" if more > 0 else ""
        raise errors.InputError(
            f"{out.bad_lines} invalid id(s); nothing was enqueued "
            f"(--skip-invalid enqueues the valid ones):\n  {shown}{tail}"
        )
    if not out.ids:
        raise errors.InputError("no ids given")
    return out
