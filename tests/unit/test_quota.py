"""The shared quota's rules: the split by demand, grants only from free units, the pacing of one
process (fallback on a store outage, the daily budget), on a fake clock."""

from __future__ import annotations

import asyncio
import random
from datetime import date, datetime

import pytest

from etl import chinatime, errors
from etl.top import quota
from etl.top.quota import Holding, Renewal, SharedQuota, decide, fair_targets


def test_fair_targets_split_evenly_and_serve_small_demands_first() -> None:
    assert fair_targets(15, {"a": 15, "b": 15}) == {"a": 8, "b": 7}
    assert sorted(fair_targets(15, dict.fromkeys("abcd", 15)).values()) == [3, 4, 4, 4]
    assert fair_targets(20, {"idle": 1, "busy": 20}) == {"idle": 1, "busy": 19}
    assert fair_targets(20, {"a": 3, "b": 4}) == {"a": 3, "b": 4}  # left over stays free


def test_fair_targets_never_exceed_the_total() -> None:
    rng = random.Random(7)
    for _ in range(2000):
        total = rng.randint(1, 60)
        demands = {f"h{i}": rng.randint(0, 70) for i in range(rng.randint(1, 9))}
        targets = fair_targets(total, demands)
        assert sum(targets.values()) <= total
        assert all(0 <= targets[h] <= d for h, d in demands.items())


def test_a_holder_grows_only_into_units_no_live_lease_counts() -> None:
    holdings = [Holding("a", 10, 10, 20), Holding("b", 0, 0, 20)]  # a gave 10 back, in grace
    assert decide("b", 0, holdings, 20) == quota.Decision(0, 0)
    holdings = [Holding("a", 10, 0, 20), Holding("b", 0, 0, 20)]  # the grace is over
    assert decide("b", 0, holdings, 20) == quota.Decision(10, 0)


def test_a_holder_above_its_target_gives_units_back() -> None:
    holdings = [Holding("a", 20, 0, 20), Holding("b", 0, 0, 20)]
    assert decide("a", 20, holdings, 20) == quota.Decision(10, 10)


def test_random_renewals_keep_the_sum_within_the_total() -> None:
    """Holders renewing in any order, with any demands: counted units never exceed the total."""
    rng = random.Random(3)
    total = 17
    units = dict.fromkeys("abcde", 0)
    releasing = dict.fromkeys("abcde", 0)
    for _ in range(5000):
        me = rng.choice("abcde")
        if rng.random() < 0.3:  # graces end at random moments
            releasing[rng.choice("abcde")] = 0
        demands = {h: rng.randint(0, 20) for h in units}
        holdings = [Holding(h, units[h], releasing[h], demands[h]) for h in units]
        d = decide(me, units[me], holdings, total)
        units[me] = d.units
        releasing[me] += d.released
        assert sum(units.values()) + sum(releasing.values()) <= total


def test_demand_asks_for_all_when_waiting_and_lets_go_by_halves() -> None:
    assert quota.demand(20, 5, 5, 1.0, waited=True) == 20
    assert quota.demand(20, 20, 0, 1.0, waited=False) == 10
    assert quota.demand(20, 2, 0, 1.0, waited=False) == 1
    assert quota.demand(20, 4, 8, 1.0, waited=False) == 11


def test_seconds_to_china_midnight() -> None:
    at = datetime(2026, 11, 22, 23, 59, 0, tzinfo=chinatime.CHINA)
    assert quota.seconds_to_china_midnight(at) == 60
    assert quota.china_day(datetime.fromisoformat("2026-11-22T16:30:00+00:00")) == date(
        2026, 11, 23
    )


class FakeClock:
    def __init__(self) -> None:
        self.t = 100.0

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.t += seconds
        await asyncio.sleep(0)


class ScriptedStore:
    """A lease store that answers from a script (the Postgres one is tested in integration)."""

    def __init__(self, *answers: quota.Grant | Exception) -> None:
        self.answers = list(answers)
        self.renewals: list[Renewal] = []

    def renew(self, renewal: Renewal) -> quota.Grant:
        self.renewals.append(renewal)
        answer = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        if isinstance(answer, Exception):
            raise answer
        return answer

    def release(self, app_key: str, holder: str, calls: int, day: date) -> None:
        pass


async def test_store_outage_keeps_the_grant_until_the_lease_lapses_then_halves() -> None:
    clock = FakeClock()
    store = ScriptedStore(quota.Grant(8, 2, 0), errors.DatabaseError("down"))
    q = SharedQuota(store, "k", 16, clock=clock, sleep=clock.sleep, lease_seconds=3.0)
    await q.renew_once()
    assert q.share().per_second == 8
    assert q.share().rate == pytest.approx(8 * (1 - quota.HEADROOM))
    clock.t += 1
    await q.renew_once()  # fails
    assert q.outage
    assert q.share().per_second == 8
    clock.t += 2.5
    assert q.share().per_second == 4
    clock.t += 3
    assert q.share().per_second == 2
    clock.t += 60
    assert q.share().per_second == 1  # never stops
    assert store.renewals[-1].current == 8  # what it was using when the outage began


async def test_a_late_renewal_stops_relying_on_the_grant() -> None:
    clock = FakeClock()
    q = SharedQuota(ScriptedStore(quota.Grant(8, 1, 0)), "k", 16, clock=clock, sleep=clock.sleep)
    await q.renew_once()
    clock.t += quota.LEASE_SECONDS + 0.1  # no renewal came back in time
    assert q.share().per_second == 4


async def test_daily_budget_stops_before_it_is_used_up() -> None:
    clock = FakeClock()
    # 10 QPS x 3 s lease = 30 calls kept in reserve for other processes' unreported calls
    store = ScriptedStore(quota.Grant(10, 1, 960), quota.Grant(10, 1, 975))
    q = SharedQuota(store, "k", 10, daily_budget=1000, clock=clock, sleep=clock.sleep)
    await q.renew_once()
    for _ in range(10):
        await q.acquire_share()
        q.note_call(waited=False)
    waiting = asyncio.ensure_future(q.acquire_share())
    await asyncio.sleep(0)
    assert not waiting.done()  # its allowance (budget - reserve - calls today) is used up
    await q.renew_once()  # 975 + 30 >= 1000
    with pytest.raises(errors.RateLimited) as info:
        await waiting
    assert info.value.sub_code == quota.BUDGET_SUB_CODE
    assert 0 < info.value.retry_after <= 86_400
    assert store.renewals[-1].calls == 10  # the calls are counted in the renewal
