"""One quota per app key, shared by every process (on any machine) through short-lived leases.

The quota (``top_qps``) is cut into whole *units* of one call per second. Each process holds a
lease row in a store (Postgres, :mod:`etl.db.quota`) saying how many units it may use; it renews
the lease every ``RENEW_SECONDS`` and the lease lapses ``LEASE_SECONDS`` after its last renewal.
Why the sum of all processes never exceeds the quota in any one-second window:

* **Whole units.** A process granted ``g`` units paces its calls evenly at ``g * (1 - headroom)``
  per second and never lets more than ``g`` calls go in any sliding second of its own clock. An
  evenly spaced series at a rate below ``g`` puts at most ``g`` calls in any one-second window
  (a headroom ``h`` leaves about ``h`` seconds of slack for a call delayed on its way, e.g. 25 ms
  at the default 0.025), so N processes put at most ``sum(g_i) <= quota`` calls in it.
  (Fractional shares would not add up: two processes at 7.5/s can each put 8 calls in the same
  second.)
* **A unit is granted only from units no unexpired lease counts.** Renewals of one app key are
  serialised (an advisory lock) and a holder grows only into ``total - sum(units + releasing)``.
* **Hand-over keeps a grace.** A holder that shrinks applies its smaller share locally at once,
  but the store keeps counting the units it gave back (``releasing``) for ``RELEASE_GRACE``
  seconds — longer than a one-second window plus the calls already paced at the old rate — so no
  one else starts on them while they may still be in use. A closed process does the same.
* **A lease is valid locally only until ``sent + LEASE_SECONDS``**, measured from when the
  renewal that granted it was *sent* (the store's expiry is later than that), so a process that
  cannot renew stops relying on its units no later than the store frees them.
* **Dead processes** (SIGKILL) stop calling at once; their lease lapses within ``LEASE_SECONDS``
  (on the same host, as soon as a neighbour sees the pid is gone, plus the grace) and the
  survivors' next renewals take the units.

The split is by demand: each holder reports how many units it could use (all of them when its
callers wait on the rate, a little above its recent rate otherwise) and the units are shared out
water-filling (:func:`fair_targets`). A holder above its target gives units back at its next
renewal; one below grows into free units.

Assumptions: a renewal's answer reaches its process within about a second of the store's commit
(the grace covers one second of the old rate). Expiry is judged by the database's clock and
durations by each process's own monotonic clock, so the machines' clocks need not agree.

A store outage degrades to a safe local rate: the last grant until the lease would lapse, then
halving every ``LEASE_SECONDS`` down to one unit — never more than the last grant, never zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Protocol

from etl import chinatime, errors
from etl.top.ratelimit import HEADROOM

log = logging.getLogger(__name__)

RENEW_SECONDS = 1.0  # how often a holder renews its lease (one transaction)
LEASE_SECONDS = 3.0  # a lease lapses this long after its last renewal
RELEASE_GRACE = 2.0  # units given back stay counted this long (> 1 s window + paced calls)
DEAD_GRACE = 1.2  # a lease of a process found dead on this host lapses this long after
BUDGET_SUB_CODE = "etl.daily-budget"

Clock = Callable[[], float]
Sleep = Callable[[float], Awaitable[None]]


def total_units(quota: float) -> int:
    """Whole calls per second in ``quota`` (at least one)."""
    return max(1, math.floor(quota + 1e-9))


@dataclass(frozen=True)
class Holding:
    """One live lease as the store sees it."""

    holder: str
    units: int  # granted, may be used now
    releasing: int  # given back, still counted (0 once the grace is over)
    demand: int  # units the holder could use


def fair_targets(total: int, demands: Mapping[str, int]) -> dict[str, int]:
    """Water-filling: each holder gets its demand or an even share of what is left, whichever is
    smaller; smaller demands are served first. Deterministic (ties by holder name), so every
    holder computes the same split from the same rows. The targets add up to at most ``total``.
    """
    targets: dict[str, int] = {}
    left = total
    ordered = sorted(demands.items(), key=lambda kv: (kv[1], kv[0]))
    for i, (holder, demand) in enumerate(ordered):
        share = -(-left // (len(ordered) - i))  # ceil
        give = max(0, min(demand, share, left))
        targets[holder] = give
        left -= give
    return targets


@dataclass(frozen=True)
class Decision:
    units: int  # the holder's new grant
    released: int  # units it gives back now (counted until the grace ends)


def decide(me: str, current: int, holdings: list[Holding], total: int) -> Decision:
    """The new grant of ``me`` (holding ``current`` units) given every live lease (``me``
    included, with its fresh demand). Grows only into units no live lease counts."""
    targets = fair_targets(total, {h.holder: h.demand for h in holdings})
    target = targets.get(me, 0)
    if current > target:
        return Decision(target, current - target)
    held = sum(h.units + h.releasing for h in holdings)
    free = max(0, total - held)
    return Decision(current + min(target - current, free), 0)


def demand(total: int, granted: int, calls: int, seconds: float, waited: bool) -> int:
    """Units a holder asks for: all of them when its callers waited on the rate (or it had none);
    otherwise a little above what it used, at least one (an idle holder asks for little). It
    gives back at most half of its grant per renewal, so a pause of a second or two (a short
    ban, a slow commit, the gap between two polls) does not throw its share away."""
    if waited:
        return total
    used = calls / max(seconds, 1e-3)
    return max(1, min(total, max(math.ceil(used * 1.25) + 1, granted // 2)))


def seconds_to_china_midnight(now: datetime | None = None) -> float:
    moment = (now or datetime.now(chinatime.CHINA)).astimezone(chinatime.CHINA)
    midnight = datetime.combine(moment.date() + timedelta(days=1), datetime.min.time())
    return max(1.0, (midnight.replace(tzinfo=chinatime.CHINA) - moment).total_seconds())


def china_day(now: datetime | None = None) -> date:
    return (now or datetime.now(chinatime.CHINA)).astimezone(chinatime.CHINA).date()


# ------------------------------------------------------------------------------ the store


@dataclass(frozen=True)
class Renewal:
    """What a holder tells the store at each renewal."""

    app_key: str
    holder: str
    role: str
    quota: float
    current: int  # units it uses now (its last grant, or its fallback after an outage)
    demand: int
    rate: float  # calls per second it made since the last renewal
    calls: int  # calls since the last renewal (added to the day's count)
    day: date  # China-time day the calls count to


@dataclass(frozen=True)
class Grant:
    units: int
    holders: int  # live holders of the app key, this one included
    calls_today: int


class LeaseStore(Protocol):
    """Where leases live (Postgres). Blocking calls; run on a worker thread."""

    def renew(self, renewal: Renewal) -> Grant: ...

    def release(self, app_key: str, holder: str, calls: int, day: date) -> None: ...


def holder_id() -> str:
    """``host:pid#token``: the pid lets a neighbour on the same host see the process is gone."""
    return f"{socket.gethostname()}:{os.getpid()}#{secrets.token_hex(3)}"


@dataclass(frozen=True)
class Share:
    rate: float  # calls per second to pace at
    per_second: int  # most calls in any sliding second


class SharedQuota:
    """The pacing source of one process for one app key (see the module doc)."""

    def __init__(
        self,
        store: LeaseStore,
        app_key: str,
        quota: float,
        *,
        role: str = "client",
        daily_budget: int = 0,
        headroom: float = HEADROOM,
        clock: Clock = time.monotonic,
        sleep: Sleep = asyncio.sleep,
        renew_seconds: float = RENEW_SECONDS,
        lease_seconds: float = LEASE_SECONDS,
    ) -> None:
        self.store = store
        self.app_key = app_key
        self.quota = quota
        self.total = total_units(quota)
        self.role = role
        self.daily_budget = daily_budget
        self.headroom = headroom
        self.holder = holder_id()
        self._clock = clock
        self._sleep = sleep
        self._renew_seconds = renew_seconds
        self._lease_seconds = lease_seconds
        self.units = 0  # last grant
        self.holders = 1
        self.calls_today = 0
        self._valid_until = 0.0  # local clock: the grant is ours until then
        self._calls = 0  # calls since the last renewal
        self._waited = False  # a caller waited on the rate since the last renewal
        self._since = clock()
        self._allowance = math.inf  # calls left before the next renewal (daily budget)
        self._first = True  # a new holder usually has work waiting: it asks for all at first
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self.outage = False

    # ----------------------------------------------------------------------------- lifecycle

    async def start(self) -> None:
        """Take a lease (the first renewal) and keep renewing it in the background."""
        await self.renew_once()
        self._task = asyncio.create_task(self._loop(), name=f"quota-lease:{self.app_key}")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        calls, self._calls = self._calls, 0
        try:
            await asyncio.to_thread(
                self.store.release, self.app_key, self.holder, calls, china_day()
            )
        except Exception as exc:  # the lease lapses on its own
            log.warning("cannot release the quota lease: %s", exc)

    async def _loop(self) -> None:
        while True:
            await self._sleep(self._renew_seconds)
            await self.renew_once()

    async def renew_once(self) -> None:
        sent = self._clock()
        current = self.fallback_units() if self.outage else self.units
        renewal = Renewal(
            app_key=self.app_key,
            holder=self.holder,
            role=self.role,
            quota=self.quota,
            current=current,
            demand=demand(
                self.total, current, self._calls, sent - self._since, self._waited or self._first
            ),
            rate=self._calls / max(sent - self._since, 1e-3),
            calls=self._calls,
            day=china_day(),
        )
        try:
            grant = await asyncio.to_thread(self.store.renew, renewal)
        except Exception as exc:
            if not self.outage:
                log.error("cannot renew the quota lease (%s): pacing at a safe local rate", exc)
            self.outage = True
            self._changed.set()
            return
        if self.outage:
            log.warning("quota lease renewed again: %d of %d units", grant.units, self.total)
        self.outage = False
        self._first = False
        self._calls -= renewal.calls  # calls made while the renewal ran count next time
        self._since = sent
        self._waited = False
        self.units = grant.units
        self.holders = grant.holders
        self.calls_today = grant.calls_today
        self._valid_until = sent + self._lease_seconds
        self._allowance = self._budget_allowance()
        self._changed.set()

    # ------------------------------------------------------------------------------ pacing

    def fallback_units(self) -> int:
        """Units used while the store cannot be reached: the last grant while the lease is
        still ours, then halving every lease period, never below one."""
        if not self.units:
            return 0
        late = self._clock() - self._valid_until
        if late <= 0:
            return self.units
        return max(1, self.units >> (1 + int(late // self._lease_seconds)))

    def share(self) -> Share:
        units = self.fallback_units() if self.outage else self._live_units()
        return Share(rate=units * (1 - self.headroom), per_second=units)

    def _live_units(self) -> int:
        if self._clock() > self._valid_until:  # renewals are late: stop relying on the grant
            return self.fallback_units()
        return self.units

    def _budget_allowance(self) -> float:
        if not self.daily_budget:
            return math.inf
        reserve = math.ceil(self.quota * self._lease_seconds)  # others' unreported calls
        left = self.daily_budget - reserve - self.calls_today
        if left <= 0:
            return 0.0
        return max(1.0, left * max(self.units, 1) / self.total)

    def budget_exhausted(self) -> bool:
        return bool(self.daily_budget) and self._allowance <= 0

    async def acquire_share(self) -> Share:
        """Wait until this process may call (it holds units and has budget left); the share to
        pace at. Raises :class:`errors.RateLimited` when the daily budget is used up."""
        while True:
            if self.budget_exhausted():
                raise errors.RateLimited(
                    f"daily call budget of app key {self.app_key} nearly used "
                    f"({self.calls_today} of {self.daily_budget} calls today, China time)",
                    retry_after=seconds_to_china_midnight(),
                    sub_code=BUDGET_SUB_CODE,
                )
            share = self.share()
            if share.per_second > 0 and self._calls < self._allowance:
                return share
            self._waited = True
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._changed.wait(), timeout=self._renew_seconds)

    def note_call(self, waited: bool) -> None:
        self._calls += 1
        if waited:
            self._waited = True

    def note_blocked(self) -> None:
        self._waited = True
