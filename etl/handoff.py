"""The hand-off between a backfill's feeder and its drain (``etl backfill``).

The feeder (a thread: :func:`etl.intake.feed`) reads the backfill's ids a chunk at a time. While
the backfill is the app key's one process, the ids that have no queue row yet are not inserted:
they are handed over here, in memory, and the drain's lanes take them from here instead of
claiming them from the table. Each one's row is written once, by the transaction that loads its
batch, already in the state its outcome leaves it in (:func:`etl.db.queue.record_handed`): one
write an id, where queueing, leasing and acking it wrote three versions of its row (measured,
50,000 ids, one connection, queue writes and backfill membership: ~55 µs an id leased as it was
queued then acked, ~30 written once; ~24 on 40,000 ids since the rows are a plain insert and
`backfill_ids` has no foreign keys, migration 0010).

Only while the backfill is the app key's one process: beside a worker (or any other process
holding a share of the quota, see :mod:`etl.top.quota`) the feeder queues the ids for everyone
to claim, as without a hand, so that the others help with them and keep their share of the
quota by demand — which is what lets a worker fetch a live id within a poll interval while a
backfill runs (an idle worker holds no share, and growing one takes seconds). A process that
starts while ids wait here makes the drain queue those (``pending``) at its next take, for
everyone to claim.

Bounded: the feeder waits while ``window`` ids are waiting here, so it runs at most a chunk or
two ahead of the lanes; the rest of the file is read as the lanes need it. Ids already queued
before the backfill (another run of it, a worker's, a message's) are not handed over: the lanes
claim them as before. When the drain ends (finished, a stop, a ban, rejected credentials), the
ids still here — waiting, or taken by a batch that did not commit — are queued ``pending`` by
:func:`etl.intake.give_back`. Only a killed process leaves them unqueued: the same command again
resumes the backfill and reads them again, as it does the part of the file not yet read.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable, Iterable, Sequence

from etl.db import queue

WAIT_SECONDS = 0.1  # how soon a waiting feeder sees a stop


class Hand:
    """Ids handed over without a queue row, per api, in the order they were read. Their items
    carry negative ids (``Item.queued`` is False) until their rows are written."""

    def __init__(self, window: int) -> None:
        self.window = max(1, window)
        self._lock = threading.Condition()
        self._waiting: dict[str, deque[queue.Item]] = {}
        self._out: dict[int, queue.Item] = {}  # taken by a batch, rows not written yet
        self._bound = False
        self._alone: Callable[[], bool] = lambda: True
        self._closed = False
        self._last_id = 0
        self.handed = 0  # ids put here so far

    # ------------------------------------------------------------------ the drain's side

    def bind(self, alone: Callable[[], bool] = lambda: True) -> None:
        """The drain is ready: the feeder hands its new ids over while ``alone()`` (no other
        process shares the app key's quota)."""
        with self._lock:
            self._bound = True
            self._alone = alone
            self._lock.notify_all()

    @property
    def bound(self) -> bool:
        return self._bound

    def take(self, api: str, limit: int) -> list[queue.Item]:
        """Up to ``limit`` ids of ``api``, in the order they were read; they are out until
        :meth:`written` (or given back by :meth:`close`)."""
        items: list[queue.Item] = []
        with self._lock:
            waiting = self._waiting.get(api)
            while waiting and len(items) < limit:
                item = waiting.popleft()
                self._out[item.id] = item
                items.append(item)
            if items:
                self._lock.notify_all()
        return items

    def written(self, items: Iterable[queue.Item]) -> None:
        """The rows of these ids were committed (with their batch)."""
        with self._lock:
            for item in items:
                self._out.pop(item.id, None)

    def keep(self, items: Iterable[queue.Item]) -> None:
        """These ids still have no row (the database refused them): given back at :meth:`close`."""
        with self._lock:
            for item in items:
                self._out[item.id] = item

    def spill(self) -> list[queue.Item]:
        """Every id still waiting (to be queued for everyone: another process now shares the
        app key, see :meth:`bind`)."""
        with self._lock:
            items = self._unload()
            self._lock.notify_all()
        return items

    def waiting(self) -> int:
        with self._lock:
            return self._count()

    def _count(self) -> int:  # with the lock held
        return sum(len(d) for d in self._waiting.values())

    def _unload(self) -> list[queue.Item]:  # with the lock held: every id waiting, taken out
        items = [item for waiting in self._waiting.values() for item in waiting]
        self._waiting.clear()
        return items

    def close(self) -> list[queue.Item]:
        """No more ids are taken or put. Returns those without a row: still waiting, or taken
        by a batch that did not commit (for the caller to queue)."""
        with self._lock:
            self._closed = True
            rest = self._unload() + list(self._out.values())
            self._out.clear()
            self._lock.notify_all()
        return rest

    # ----------------------------------------------------------------- the feeder's side

    def ready(self, stopped: Callable[[], bool]) -> bool:
        """Wait until the drain is ready and there is room for another chunk. True: hand the
        chunk's new ids over; False: queue them for everyone (another process shares the
        quota, or the drain is gone), or stop (``stopped()``: the caller tells which)."""
        with self._lock:
            while True:
                if self._closed or stopped():
                    return False
                if self._bound:
                    if not self._alone():
                        return False
                    if self._count() < self.window:
                        return True
                self._lock.wait(WAIT_SECONDS)

    def put(self, api: str, id_kind: str, keys: Sequence[str]) -> bool:
        """Hand over ids that have no queue row; False if the drain is gone (nothing was put)."""
        with self._lock:
            if self._closed:
                return False
            waiting = self._waiting.setdefault(api, deque())
            for key in keys:
                self._last_id -= 1
                waiting.append(queue.Item(self._last_id, api, id_kind, key, 0, 0, "new"))
            self.handed += len(keys)
            self._lock.notify_all()
        return True
