"""The hand-off between a backfill's feeder and its drain (``etl backfill``).

The feeder (a thread: :func:`etl.intake.feed`) queues the backfill's ids a chunk at a time. The
rows it adds are leased to the drain as they are inserted (:func:`etl.db.queue.enqueue_leased`)
and handed over here, so that the drain's lanes take them from memory instead of claiming them
again from the table: one write an id fewer, and no claim scanning past the rows already
claimed (measured, 50,000 ids, one connection: queue, claim and ack ~190 µs an id, queue
leased and ack ~80-110).

Only while the backfill is the app key's one process: beside a worker (or any other process
holding a share of the quota, see :mod:`etl.top.quota`) the feeder queues the ids for everyone
to claim, as without a hand, so that the others help with them and keep their share of the
quota by demand — which is what lets a worker fetch a live id within a poll interval while a
backfill runs (an idle worker holds no share, and growing one takes seconds). A process that
starts while ids wait here makes the drain give those back to the queue (``pending``) at its next
take, for everyone to claim.

Bounded: the feeder waits while ``window`` ids are waiting here, so it runs at most a chunk or
two ahead of the lanes; the rest of the file is queued as the lanes need it. An id waits here
under its lease; one taken after half of its lease has gone by is re-leased first
(:func:`etl.db.queue.relet`). Ids already queued before the backfill (another run of it, a
worker's, ...) are not handed over: the lanes claim them as before. Whatever is still here when
the drain ends (a stop, a ban) is released with the worker's other leases.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from etl.db import queue

WAIT_SECONDS = 0.1  # how soon a waiting feeder sees a stop


class Hand:
    """Items leased as they were queued, per api, in the order they were queued."""

    def __init__(self, window: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.window = max(1, window)
        self._clock = clock
        self._lock = threading.Condition()
        self._items: dict[str, deque[tuple[float, queue.Item]]] = {}
        self._lease: queue.Lease | None = None
        self._alone: Callable[[], bool] = lambda: True
        self._closed = False
        self.handed = 0  # items put here so far

    # ------------------------------------------------------------------ the drain's side

    def bind(self, lease: queue.Lease, alone: Callable[[], bool] = lambda: True) -> None:
        """The drain is ready: the feeder leases what it queues to ``lease.worker`` while
        ``alone()`` (no other process shares the app key's quota)."""
        with self._lock:
            self._lease = lease
            self._alone = alone
            self._lock.notify_all()

    @property
    def lease(self) -> queue.Lease | None:
        return self._lease

    def take(self, api: str, limit: int) -> tuple[list[queue.Item], list[queue.Item]]:
        """Up to ``limit`` items of ``api``: (fresh, stale) — stale ones waited here more than
        half their lease and must be re-leased before they are fetched."""
        fresh: list[queue.Item] = []
        stale: list[queue.Item] = []
        with self._lock:
            waiting = self._items.get(api)
            if not waiting:
                return fresh, stale
            assert self._lease is not None
            old = self._clock() - self._lease.seconds / 2
            while waiting and len(fresh) + len(stale) < limit:
                at, item = waiting.popleft()
                (stale if at < old else fresh).append(item)
            self._lock.notify_all()
        return fresh, stale

    def spill(self) -> list[queue.Item]:
        """Every item still waiting (to be given back to the queue: another process now shares
        the app key, see :meth:`bind`)."""
        with self._lock:
            items = [item for waiting in self._items.values() for _, item in waiting]
            self._items.clear()
            self._lock.notify_all()
        return items

    def waiting(self) -> int:
        with self._lock:
            return self._count()

    def _count(self) -> int:  # with the lock held
        return sum(len(d) for d in self._items.values())

    def close(self) -> None:
        """No more items are taken or put (those still waiting are the caller's to release,
        with the worker's other leases)."""
        with self._lock:
            self._closed = True
            self._items.clear()
            self._lock.notify_all()

    # ----------------------------------------------------------------- the feeder's side

    def wait_lease(self, stopped: Callable[[], bool]) -> queue.Lease | None:
        """The lease to queue the next chunk under, once the drain is ready and there is room
        for it; None: queue it for everyone (another process shares the quota), or stop
        (``stopped()``, or the drain is gone: the caller tells which)."""
        with self._lock:
            while True:
                if self._closed or stopped():
                    return None
                if self._lease is not None:
                    if not self._alone():
                        return None
                    if self._count() < self.window:
                        return self._lease
                self._lock.wait(WAIT_SECONDS)

    def put(self, items: list[queue.Item]) -> bool:
        """Hand over items just committed as leased; False if the drain is gone (they stay
        leased until released with the worker's leases)."""
        at = self._clock()
        with self._lock:
            if self._closed:
                return False
            for item in items:
                self._items.setdefault(item.api, deque()).append((at, item))
            self.handed += len(items)
            self._lock.notify_all()
        return True
