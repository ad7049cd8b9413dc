"""The overlapped load path: digest → hash check → normalize (another process) → load.

Used by ``etl load`` (captured response bodies), ``etl replay`` (stored raw JSON), the sync
loop (:func:`prepare` for the orders a batch fetched) and the benchmarks. For each batch:

1. *digest* (key, canonical content hash, raw JSON text) — no normalization;
2. look up the stored hashes of the batch's keys (one SELECT) — an unchanged order (same hash)
   or a stale one (fetched before the stored one) is never normalized;
3. *normalize + encode* the rest to COPY text in the :class:`~etl.normalize.pool.Normalizer`;
4. :func:`etl.db.load.load` (which checks again, locking the rows it rewrites), then commit.

:func:`run` keeps up to ``depth`` batches between steps 1 and 4, so while the database loads one
batch the pool normalizes the next ones: the memory held is bounded by ``depth`` batches.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import IO, Any, TypeVar

import psycopg
import sqlalchemy as sa

from etl import errors
from etl.db import load
from etl.db.load import Encoded
from etl.normalize.pool import (
    Digested,
    Normalizer,
    digest_lines,
    digest_orders,
    encode_orders,
)

log = logging.getLogger(__name__)

T = TypeVar("T")

# Batches in flight between reading and loading. Measured (2 cores, 10 % changed re-sync): 3
# leaves the pool idle while the database loads (2 batches ahead of the one loading), 5 keeps it
# busy (~1.2x); 8 adds nothing. Each holds ~BATCH_BYTES of lines and about as much of rows.
DEPTH = 5
BATCH_LINES = 2000  # lines per batch at most ...
BATCH_BYTES = 4 << 20  # ... and about this many bytes (≈ 750 orders of ~5 KB)


def needs_rows(orders: list[Encoded], stored: dict[Any, tuple[str, datetime]]) -> list[Encoded]:
    """The orders to normalize: new, or changed and not older than the stored payload."""
    out = []
    for order in orders:
        seen = stored.get(order.key)
        if seen is None or (seen[0] != order.payload_hash and order.fetched_at >= seen[1]):
            out.append(order)
    return out


@dataclass
class Totals:
    """What a run loaded, summed over its batches."""

    batches: int = 0
    orders: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    normalized: int = 0  # orders that paid for normalization (new or changed ones only)
    bad_lines: int = 0
    bad_fields: dict[str, int] = field(default_factory=dict)
    unknown_fields: set[str] = field(default_factory=set)

    def add(self, result: load.LoadResult, normalized: int) -> None:
        o = result.orders
        self.batches += 1
        self.inserted += o.inserted
        self.updated += o.updated
        self.unchanged += o.unchanged
        self.stale += o.stale
        self.normalized += normalized + result.late_normalized


@dataclass
class _Slot:
    digest: Future[Digested]
    staged: Future[None] | None = None  # the hash check + hand-off to the pool, done
    rows: Future[list[Encoded]] | None = None
    skipped: list[Encoded] = field(default_factory=list)
    digested: Digested | None = None
    normalized: int = 0


class Mix:
    """What the hash checks found lately: whether the next batches are worth normalizing in
    the same pass as digesting them (mostly new or changed orders, e.g. a first load)."""

    SHARE = 0.5  # of the orders of the last checked batch that needed rows

    def __init__(self) -> None:
        self.share: float | None = None  # unknown until a batch was checked

    def observe(self, needed: int, orders: int) -> None:
        if orders:
            self.share = needed / orders

    def encode_all(self) -> bool:
        return self.share is not None and self.share >= self.SHARE


OnBatch = Callable[[Digested, load.LoadResult], None]
Lookup = Callable[[list[Any]], dict[Any, tuple[str, datetime]]]


def run(
    conn: psycopg.Connection[Any],
    api: str,
    digests: Iterable[Future[Digested]],
    normalizer: Normalizer,
    *,
    rebuild: bool = False,
    depth: int | None = None,
    lookup_conn: psycopg.Connection[Any] | None = None,
    on_batch: OnBatch | None = None,
    stop: Callable[[], bool] | None = None,
    mix: Mix | None = None,
) -> Totals:
    """Load every batch of ``digests`` (futures, pulled lazily: at most ``depth`` in flight),
    each in its own transaction on ``conn``. ``rebuild`` (replay) normalizes and rewrites every
    order. ``stop()`` true ends the run after the batches already loaded.

    With ``lookup_conn`` (another connection) or ``rebuild``, a helper thread checks each
    digested batch's hashes and hands it to the pool as soon as it is digested, so the pool
    never waits for this thread's load to finish; otherwise that is done here, between loads.
    """
    depth = DEPTH if depth is None else depth
    totals = Totals()
    window: deque[_Slot] = deque()
    source: Iterator[Future[Digested]] = iter(digests)
    exhausted = False
    lookup: Lookup | None = None
    if not rebuild:
        lookup = _lookup(lookup_conn or conn, api)
    with ThreadPoolExecutor(1, thread_name_prefix="etl-stage") as stager:
        threaded = rebuild or lookup_conn is not None
        try:
            while True:
                while not exhausted and len(window) < depth and not (stop and stop()):
                    nxt = next(source, None)
                    if nxt is None:
                        exhausted = True
                        break
                    slot = _Slot(nxt)
                    if threaded:
                        slot.staged = stager.submit(_to_pool, slot, normalizer, lookup, mix)
                    window.append(slot)
                if not window:
                    return totals
                if not threaded:  # every digested batch to the pool now, before this load
                    for i, slot in enumerate(window):
                        if slot.rows is None and (i == 0 or slot.digest.done()):
                            _to_pool(slot, normalizer, lookup, mix)
                head = window.popleft()
                if head.staged is not None:
                    head.staged.result()
                assert head.rows is not None
                assert head.digested is not None
                encoded = head.rows.result()
                result = load.load(conn, api, [*encoded, *head.skipped], rebuild=rebuild)
                conn.commit()
                totals.orders += len(head.digested.orders)
                totals.bad_lines += len(head.digested.errors)
                totals.add(result, head.normalized)
                for order in encoded:
                    for name in order.bad_fields:
                        totals.bad_fields[name] = totals.bad_fields.get(name, 0) + 1
                    totals.unknown_fields.update(order.unknown_fields)
                if on_batch:
                    on_batch(head.digested, result)
                if stop and stop():
                    return totals
        finally:
            for slot in window:  # stopped or failed: drop what is still queued
                slot.digest.cancel()
                if slot.staged is not None:
                    slot.staged.cancel()
            for slot in window:
                if slot.staged is not None and not slot.staged.cancelled():
                    with contextlib.suppress(BaseException):
                        slot.staged.result()
                if slot.rows is not None:
                    slot.rows.cancel()


def _lookup(conn: psycopg.Connection[Any], api: str) -> Lookup:
    def stored(keys: list[Any]) -> dict[Any, tuple[str, datetime]]:
        found = load.stored_hashes(conn, api, keys)
        conn.commit()  # a read only: end its transaction so no snapshot is held meanwhile
        return found

    return stored


def _to_pool(
    slot: _Slot, normalizer: Normalizer, lookup: Lookup | None, mix: Mix | None = None
) -> None:
    """Check a digested batch's hashes (``lookup`` None: rebuild, all of them) and hand the
    orders to normalize to the pool (unless the digest encoded them all already)."""
    digested = slot.digest.result()
    if lookup is None:
        need = digested.orders
    else:
        stored = lookup(list({o.key for o in digested.orders}))
        need = needs_rows(digested.orders, stored)
        picked = {id(o) for o in need}
        slot.skipped = [o for o in digested.orders if id(o) not in picked]
    if mix is not None:
        mix.observe(len(need), len(digested.orders))
    if digested.encoded:
        slot.rows = completed(need)
        slot.normalized = len(digested.orders)
    else:
        slot.rows = normalizer.submit(len(need), encode_orders, need)
        slot.normalized = len(need)
    slot.digested = digested


async def prepare(
    normalizer: Normalizer,
    stored: Callable[[list[Any]], dict[Any, tuple[str, datetime]]],
    api: str,
    entries: list[tuple[str, dict[str, Any], str | None]],
    fetched_at: datetime,
) -> tuple[dict[str, Encoded], dict[str, str], int]:
    """For the sync loop: the orders one batch fetched (already parsed), ready to load.

    Returns the orders by caller key (unchanged ones without rows), the invalid ones with why,
    and how many were normalized. ``stored(keys)`` looks up the stored hashes (a worker thread
    runs it)."""
    done, invalid = await asyncio.to_thread(digest_orders, api, entries, fetched_at)
    done, normalized = await with_rows(normalizer, stored, done)
    return done, invalid, normalized


async def with_rows(
    normalizer: Normalizer,
    stored: Callable[[list[Any]], dict[Any, tuple[str, datetime]]],
    orders: dict[str, Encoded],
) -> tuple[dict[str, Encoded], int]:
    """The digested orders of one fetched batch (by caller key; some may have rows already, see
    :func:`etl.normalize.pool.read_wdk_body`) with rows for every new or changed one: one
    lookup of the stored hashes, then the rest normalized in the pool (or, for a few, a thread).
    Returns them, and how many paid for normalization. A batch whose orders all have rows
    already is returned as it is: the load checks the stored hashes itself, under its lock."""
    found = list(orders.values())
    if all(o.rows is not None for o in found):
        return orders, len(found)
    seen = await asyncio.to_thread(stored, list({o.key for o in found}))
    need = [o for o in needs_rows(found, seen) if o.rows is None]
    if need:
        loop = asyncio.get_running_loop()
        encoded = await loop.run_in_executor(normalizer.pool_for(len(need)), encode_orders, need)
        by_id = {id(o): e for o, e in zip(need, encoded, strict=True)}
        orders = {k: by_id.get(id(o), o) for k, o in orders.items()}
    return orders, sum(o.rows is not None for o in orders.values())


def stored_lookup(
    connect: Callable[[], Any], api: str
) -> Callable[[list[Any]], dict[Any, tuple[str, datetime]]]:
    """``stored(keys)`` for :func:`prepare` over a SQLAlchemy engine's ``connect``."""

    def stored(keys: list[Any]) -> dict[Any, tuple[str, datetime]]:
        try:
            with connect() as conn:
                pg = conn.connection.driver_connection
                assert isinstance(pg, psycopg.Connection)
                out = load.stored_hashes(pg, api, keys)
                conn.rollback()
                return out
        except (sa.exc.OperationalError, sa.exc.InterfaceError, psycopg.OperationalError) as exc:
            # Only an optimisation: without it every order is normalized, and the load (which
            # retries while the database is away) checks the hashes again under its lock.
            log.warning("cannot look up stored hashes, normalizing the whole batch: %s", exc)
            return {}

    return stored


def completed(value: T) -> Future[T]:
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut


def _open(name: str) -> IO[bytes]:
    if name == "-":
        return sys.stdin.buffer
    path = Path(name)
    if not path.is_file():
        raise errors.InputError(f"{name}: no such file")
    return path.open("rb")


def read_batches(files: Iterable[str], sizes: list[int]) -> Iterator[list[tuple[str, bytes]]]:
    """``(file:line, bytes)`` of every non-blank line of ``files`` (``-``: standard input), in
    batches of at most BATCH_LINES lines / about BATCH_BYTES; ``sizes[0]`` counts bytes read."""
    batch: list[tuple[str, bytes]] = []
    held = 0
    for name in files:
        fh = _open(name)
        label = "<stdin>" if name == "-" else name
        try:
            for number, line in enumerate(fh, 1):
                sizes[0] += len(line)
                if not line.strip():
                    continue
                batch.append((f"{label}:{number}", line))
                held += len(line)
                if len(batch) >= BATCH_LINES or held >= BATCH_BYTES:
                    yield batch
                    batch, held = [], 0
        finally:
            if fh is not sys.stdin.buffer:
                fh.close()
    if batch:
        yield batch


def load_files(
    conn: psycopg.Connection[Any],
    api: str,
    files: Iterable[str],
    normalizer: Normalizer,
    fetched_at: datetime,
    *,
    user_id: str | None = None,
    sizes: list[int] | None = None,
    lookup_conn: psycopg.Connection[Any] | None = None,
    on_batch: OnBatch | None = None,
    stop: Callable[[], bool] | None = None,
) -> Totals:
    """``etl load``: captured response bodies (JSON lines) through :func:`run`; ``lookup_conn``
    (a second connection) lets the hash checks run beside the loads."""
    counted = sizes if sizes is not None else [0]
    mix = Mix()

    def digests() -> Iterator[Future[Digested]]:
        for batch in read_batches(files, counted):
            yield normalizer.submit(
                len(batch), digest_lines, api, batch, fetched_at, user_id, mix.encode_all()
            )

    return run(
        conn,
        api,
        digests(),
        normalizer,
        lookup_conn=lookup_conn,
        on_batch=on_batch,
        stop=stop,
        mix=mix,
    )
