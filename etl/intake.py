"""Ids into the queue from arguments, a file or standard input — streamed: validated and queued a
chunk at a time, so a file of ten million ids takes bounded memory, and a bad line still means
nothing is queued (unless ``skip_invalid``).

Two ways: :func:`queue_ids` validates and queues in one pass inside the caller's transaction
(``etl enqueue``); a backfill first reads the whole input (:func:`read_ids`: validated,
fingerprinted, spooled to a temporary file, nothing written to the database), then
:func:`feed` queues it in short transactions while the backfill already fetches the first ids.
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import IO

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from etl import errors, ids
from etl.db import backfills, queue
from etl.handoff import Hand

log = logging.getLogger(__name__)

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
    priority: int = queue.PRIORITY_LIVE,
    progress: Progress | None = None,
    chunk_size: int = ids.CHUNK,
) -> Intake:
    """Validate and queue the ids of ``lines``. Raises :class:`errors.InputError` — the caller's
    transaction then rolls everything back — when a line is bad (unless ``skip_invalid``) or
    there is no id at all."""
    out = Intake()
    digest = _digest(api, id_kind)
    last_report = time.monotonic()
    for chunk in ids.chunks(lines, api, id_kind, where, chunk_size):
        _read(out, chunk, digest)
        if out.bad_lines and not skip_invalid:
            continue  # keep reading, to say how many lines are bad; nothing will be queued
        out.added += queue.enqueue(
            conn, api, id_kind, chunk.keys, refresh=refresh, priority=priority
        )
        if progress and time.monotonic() - last_report >= PROGRESS_SECONDS:
            last_report = time.monotonic()
            progress(out)
    return _checked(out, digest, skip_invalid)


@dataclass
class Spooled:
    """An input read whole by :func:`read_ids`: what was read, and its valid ids in a temporary
    file (one per line, deduplicated within each chunk of ``ids.CHUNK``)."""

    intake: Intake
    file: IO[bytes]

    def chunks(self, size: int, first: int | None = None) -> Iterator[list[str]]:
        """The ids again, ``size`` at a time (the first chunk ``first``), each chunk without
        duplicates."""
        self.file.seek(0)
        keys: dict[str, None] = {}
        want = first or size
        for line in self.file:
            keys[line.rstrip(b"\n").decode()] = None
            if len(keys) >= want:
                yield list(keys)
                keys, want = {}, size
        if keys:
            yield list(keys)

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Spooled:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def read_ids(
    api: str,
    id_kind: str,
    lines: Iterable[str],
    where: str,
    *,
    skip_invalid: bool = False,
    progress: Progress | None = None,
    chunk_size: int = ids.CHUNK,
) -> Spooled:
    """Validate and fingerprint the whole input, writing nothing to the database; raises
    :class:`errors.InputError` as :func:`queue_ids` does."""
    out = Intake()
    digest = _digest(api, id_kind)
    spool = tempfile.TemporaryFile()  # noqa: SIM115 - owned by the Spooled returned
    try:
        last_report = time.monotonic()
        for chunk in ids.chunks(lines, api, id_kind, where, chunk_size):
            _read(out, chunk, digest)
            if chunk.keys and not (out.bad_lines and not skip_invalid):
                spool.write("".join(f"{key}\n" for key in chunk.keys).encode())
            if progress and time.monotonic() - last_report >= PROGRESS_SECONDS:
                last_report = time.monotonic()
                progress(out)
        return Spooled(_checked(out, digest, skip_invalid), spool)
    except BaseException:
        spool.close()
        raise


FEED_CHUNK = 5_000  # ids per transaction while feeding a backfill: the first are fetched soon
# ... the first transaction smaller, so the drain has its first batches at once (measured,
# uncapped backfill, 2 cores: a first chunk of 5,000 ids kept the drain waiting ~0.3 s)
FIRST_FEED_CHUNK = 1_000


@dataclass
class Fed:
    """What :func:`feed` queued."""

    added: int = 0  # rows added to the queue or re-armed, and ids handed over (etl.handoff)
    finished: int = 0  # ids already finished before the backfill started (see backfills.add)
    complete: bool = True  # False: stopped before the end (the next run resumes)


def feed(
    engine: Engine,
    backfill_id: int,
    api: str,
    id_kind: str,
    spooled: Spooled,
    *,
    since: datetime,
    refresh: bool = False,
    priority: int = queue.PRIORITY_BULK,
    stopped: Callable[[], bool] = lambda: False,
    chunk_size: int = FEED_CHUNK,
    first_chunk: int = FIRST_FEED_CHUNK,
    hand: Hand | None = None,
) -> Fed:
    """Queue the spooled ids and make them part of the backfill, a transaction per chunk, so
    that a drain running meanwhile claims each chunk as soon as it is committed. Stops between
    chunks when ``stopped()``; what was committed stays (the same input again resumes).

    With ``hand``, while the backfill is the app key's one process, the ids of a chunk that
    have no queue row are not queued: they are handed over to the drain, which writes each
    one's row with its outcome (see :mod:`etl.handoff`); each chunk waits until the drain is
    ready and few enough handed ids are still waiting. The backfill is then sealed by
    :func:`give_back`, once the drain is over."""
    fed = Fed()
    for keys in spooled.chunks(chunk_size, min(first_chunk, chunk_size)):
        handing = hand is not None and hand.ready(stopped)
        if stopped():
            fed.complete = False
            break
        new: list[str] = []
        with engine.begin() as conn:
            if handing:
                have = queue.known(conn, api, id_kind, keys)
                new = [k for k in keys if k not in have]
                keys = [k for k in keys if k in have]
            if keys:
                fed.added += queue.enqueue(
                    conn, api, id_kind, keys, refresh=refresh, priority=priority
                )
                fed.finished += backfills.add(conn, backfill_id, api, id_kind, keys, since)
        if new:
            assert hand is not None
            if not hand.put(api, id_kind, new):  # the drain is gone: the next run reads them
                fed.complete = False
                break
            fed.added += len(new)
    if fed.complete and hand is None:
        with engine.begin() as conn:
            backfills.seal(conn, backfill_id)
    return fed


def give_back(engine: Engine, backfill_id: int, hand: Hand, *, seal: bool) -> int:
    """Once the drain is over: queue (``pending``) the ids still in ``hand`` — waiting, or
    taken by a batch that did not commit — as part of the backfill, and with ``seal`` (every id
    of the input was fed) record how many ids the backfill holds. Returns how many were still in
    the hand; if the database refuses them, they are not queued (logged): the same command
    again resumes the backfill and reads them again."""
    rest = hand.close()
    try:
        with engine.begin() as conn:
            if rest:
                queue.queue_handed(conn, rest, backfill_id)
            if seal:
                backfills.seal(conn, backfill_id)
    except sa.exc.SQLAlchemyError as exc:
        log.error(
            "%d ids of backfill %d could not be queued (%s): run the same command again",
            len(rest),
            backfill_id,
            exc.__class__.__name__,
        )
        return len(rest)
    if rest:
        log.info("queued %d ids of backfill %d that were not fetched", len(rest), backfill_id)
    return len(rest)


def _digest(api: str, id_kind: str) -> hashlib._Hash:
    return hashlib.sha256(f"{api}\n{id_kind}\n".encode())


def _read(out: Intake, chunk: ids.Chunk, digest: hashlib._Hash) -> None:
    out.lines = chunk.lines
    out.bad_lines += len(chunk.errors)
    out.errors.extend(chunk.errors[: SHOWN_ERRORS - len(out.errors)])
    out.ids += len(chunk.keys)
    out.duplicates += chunk.duplicates
    for key in chunk.keys:
        digest.update(key.encode() + b"\n")


def _checked(out: Intake, digest: hashlib._Hash, skip_invalid: bool) -> Intake:
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
