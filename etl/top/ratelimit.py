"""Flow control shared by every caller of one app key in the process.

* a token bucket at ``qps`` calls per second (burst of one: calls are spaced evenly, so a gateway
  counting per second never sees more than it allows) — or, with a :class:`PacingSource` (the
  app key's quota shared between processes, :mod:`etl.top.quota`), at this process's share of it;
* a concurrency cap (calls in flight);
* a ban gate: when the platform bans the app key, every caller waits until the ban ends.

The clock and sleep are injectable, so the decisions are testable without waiting.
"""

from __future__ import annotations

import asyncio
import math
import time
import weakref
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


class TokenBucket:
    """Grants one call every ``1/rate`` seconds, with no burst (virtual scheduling).

    Callers take turns (a FIFO lock) and the one at the head sleeps until its slot. Slots advance
    by exact intervals, so a late wake-up does not lower the long-run rate; after an idle spell
    the first caller goes at once and the next one a full interval later (never a burst). The
    head re-reads the rate at least every ``MAX_NAP`` seconds, so a new rate (a shared quota's
    grant changing) applies at once instead of after slots reserved at the old one.
    """

    MAX_NAP = 0.1

    def __init__(
        self, rate: float, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep
    ) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self._interval = 1.0 / rate
        self._clock = clock
        self._sleep = sleep
        self._last = clock() - self._interval  # the previous slot
        self._lock = asyncio.Lock()

    def set_rate(self, rate: float) -> None:
        """Pace the next slots at ``rate``."""
        if rate <= 0:
            raise ValueError("rate must be positive")
        if rate != self.rate:
            self.rate = rate
            self._interval = 1.0 / rate

    async def acquire(self) -> bool:
        """Wait for the next slot; True when the caller had to queue (the callers want more than
        the rate)."""
        queued = self._lock.locked()
        async with self._lock:
            while True:
                now = self._clock()
                slot = self._last + self._interval
                if slot <= now:
                    break
                queued = True
                await self._sleep(min(slot - now, self.MAX_NAP))
            # Late by less than an interval: keep to the grid (a late wake-up does not lower the
            # long-run rate), but never less than half an interval after the previous call, so
            # callers held up together do not leave in a burst. Idle longer: restart from now.
            self._last = max(slot, now - self._interval / 2) if now - slot < self._interval else now
        return queued


class BanGate:
    """Closed until ``until`` (a clock value) after a flow-control ban; open otherwise."""

    def __init__(self, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self.until = 0.0
        self.bans = 0

    def ban(self, seconds: float) -> None:
        """Record a ban of ``seconds`` from now (a shorter one never shortens a longer one)."""
        self.bans += 1
        self.until = max(self.until, self._clock() + seconds)

    def remaining(self) -> float:
        return max(0.0, self.until - self._clock())

    async def wait(self) -> None:
        while (left := self.remaining()) > 0:
            await self._sleep(left)


class Share(Protocol):
    @property
    def rate(self) -> float: ...  # calls per second to pace at

    @property
    def per_second(self) -> int: ...  # most calls in any sliding second


class PacingSource(Protocol):
    """Where this process's rate comes from when the quota is shared with other processes.

    ``acquire_share`` waits until a call may go and returns the share to pace at; it raises
    ``errors.RateLimited`` (like a long ban) when the app key must stop, e.g. near its daily
    budget. ``note_call`` counts each call that went (``waited``: it queued on the rate);
    ``note_blocked`` says callers are waiting out a ban (their demand must not look idle).
    """

    async def acquire_share(self) -> Share: ...

    def note_call(self, waited: bool) -> None: ...

    def note_blocked(self) -> None: ...  # a caller waits out a ban: it still wants to call


class Ticket:
    """One call's place in the :class:`SlidingWindow`: pending until its request is on the wire."""

    __slots__ = ("done", "window")

    def __init__(self, window: SlidingWindow | None) -> None:
        self.window = window
        self.done = window is None

    def sent(self) -> None:
        """The request was written to the socket (an aiohttp trace hook calls this)."""
        if not self.done and self.window is not None:
            self.done = True
            self.window.record_sent()

    def finish(self) -> None:
        self.sent()  # never marked (failed early, or no hook): count it now, to be safe


class SlidingWindow:
    """At most ``limit`` calls on the wire in any second of this process's clock.

    Calls are counted when their request is written to the socket, not when the rate let them go:
    a process that stalls between the two (a busy machine) would otherwise put more calls into a
    second than it counted. A call let go but not yet written counts as written now.
    """

    def __init__(self, clock: Clock = time.monotonic, sleep: Sleep = asyncio.sleep) -> None:
        self._clock = clock
        self._sleep = sleep
        self._times: deque[float] = deque()
        self._pending = 0

    async def wait(self, limit: int) -> Ticket:
        while True:
            now = self._clock()
            while self._times and self._times[0] <= now - 1.0:
                self._times.popleft()
            if len(self._times) + self._pending < max(1, limit):
                self._pending += 1
                return Ticket(self)
            wait = self._times[0] + 1.0 - now + 1e-4 if self._times else 0.01
            await self._sleep(wait)

    def record_sent(self) -> None:
        self._pending -= 1
        self._times.append(self._clock())


HEADROOM = 0.025  # pace at (1 - HEADROOM) of the allowed rate: slack for calls delayed on their way


class FlowControl:
    """Token bucket + concurrency cap + ban gate for one app key (+ a shared quota's pacing).

    Without a pacing source the process has ``qps`` to itself: it paces at ``qps`` less the
    headroom and never puts more than ``floor(qps)`` calls on the wire in any second.
    """

    def __init__(
        self,
        qps: float,
        concurrency: int,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        pacing: PacingSource | None = None,
    ) -> None:
        self.bucket = TokenBucket(qps * (1 - HEADROOM), clock=clock, sleep=sleep)
        self.gate = BanGate(clock=clock, sleep=sleep)
        self.pacing = pacing
        self._per_second = max(1, math.floor(qps + 1e-9))
        self.window = SlidingWindow(clock=clock, sleep=sleep)
        self._slots = asyncio.Semaphore(concurrency)

    @asynccontextmanager
    async def slot(self, max_ban_wait: float = float("inf")) -> AsyncIterator[Ticket]:
        """Hold a concurrency slot for one call, after the ban (if any) and a rate token.

        Raises :class:`BanTooLong` instead of waiting out a ban longer than ``max_ban_wait``.
        """
        async with self._slots:
            await self._wait_ban(max_ban_wait)
            ticket = Ticket(None)
            if self.pacing is None:
                await self.bucket.acquire()
                ticket = await self.window.wait(self._per_second)
            else:
                share = await self.pacing.acquire_share()
                self.bucket.set_rate(share.rate)
                waited = await self.bucket.acquire()
                ticket = await self.window.wait(share.per_second)
                self.pacing.note_call(waited)
            try:
                await self._wait_ban(max_ban_wait)  # a ban may have begun while we queued
                yield ticket
            finally:
                ticket.finish()

    async def _wait_ban(self, max_wait: float) -> None:
        left = self.gate.remaining()
        if left > max_wait:
            raise BanTooLong(left)
        if left > 0 and self.pacing is not None:
            self.pacing.note_blocked()
        await self.gate.wait()


class BanTooLong(Exception):
    """The app key is banned for longer than the caller is willing to wait."""

    def __init__(self, remaining: float) -> None:
        super().__init__(f"banned for {remaining:.0f} more seconds")
        self.remaining = remaining


_shared: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[str, FlowControl]] = (
    weakref.WeakKeyDictionary()
)


def shared(app_key: str, qps: float, concurrency: int) -> FlowControl:
    """The process-wide FlowControl of ``app_key`` on the running event loop.

    The first caller's ``qps`` and ``concurrency`` win: one app key has one quota.
    """
    per_loop = _shared.setdefault(asyncio.get_running_loop(), {})
    flow = per_loop.get(app_key)
    if flow is None:
        flow = per_loop[app_key] = FlowControl(qps, concurrency)
    return flow
