"""Token bucket, ban gate and backoff decisions, on a fake clock (no real waiting)."""

from __future__ import annotations

import asyncio
import random

from etl.top.client import backoff
from etl.top.ratelimit import BanGate, FlowControl, SlidingWindow, TokenBucket, shared


class FakeClock:
    def __init__(self) -> None:
        self.t = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.t += seconds
        await asyncio.sleep(0)


async def test_bucket_spaces_calls_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    start = clock.t
    for _ in range(21):
        await bucket.acquire()
    # the first token is free, then one every 0.1 s
    assert abs((clock.t - start) - 2.0) < 1e-9


async def test_bucket_never_bursts_above_one_after_idle() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock, sleep=clock.sleep)
    await bucket.acquire()
    clock.t += 100  # long idle
    await bucket.acquire()
    before = clock.t
    await bucket.acquire()
    assert abs(clock.t - before - 0.2) < 1e-9


async def test_ban_gate_holds_every_waiter_until_the_end() -> None:
    clock = FakeClock()
    gate = BanGate(clock=clock, sleep=clock.sleep)
    gate.ban(30)
    gate.ban(5)  # a shorter ban never shortens a longer one
    assert gate.remaining() == 30
    await asyncio.gather(gate.wait(), gate.wait())
    assert clock.t >= 1030
    assert gate.remaining() == 0
    assert gate.bans == 2


async def test_flow_control_waits_for_ban_then_token() -> None:
    clock = FakeClock()
    flow = FlowControl(2.0, 1, clock=clock, sleep=clock.sleep)
    async with flow.slot():
        pass
    flow.gate.ban(10)
    async with flow.slot():
        assert clock.t >= 1010


async def test_shared_flow_control_is_one_per_app_key() -> None:
    assert shared("k1", 5, 2) is shared("k1", 50, 9)
    assert shared("k1", 5, 2) is not shared("k2", 5, 2)


def test_backoff_is_full_jitter_and_capped() -> None:
    rng = random.Random(1)
    for attempt in range(1, 12):
        ceiling = min(30.0, 0.5 * 2 ** (attempt - 1))
        values = [backoff(attempt, 0.5, 30.0, rng) for _ in range(200)]
        assert all(0 <= v <= ceiling for v in values)
        assert max(values) > ceiling * 0.8  # really spread over the whole range


async def test_bucket_applies_a_new_rate_at_once() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, clock=clock, sleep=clock.sleep)
    await bucket.acquire()
    start = clock.t
    waiting = asyncio.ensure_future(bucket.acquire())
    await asyncio.sleep(0)
    bucket.set_rate(10.0)  # a larger share arrives while a caller waits for the old slot
    assert await waiting is True  # it had to wait: the callers want more than the rate
    assert clock.t - start < 0.11


async def test_bucket_lets_callers_held_up_together_go_at_half_intervals() -> None:
    clock = FakeClock()
    bucket = TokenBucket(10.0, clock=clock, sleep=clock.sleep)
    await bucket.acquire()
    clock.t += 0.15  # the next caller wakes up 50 ms after its slot...
    await bucket.acquire()
    before = clock.t
    await bucket.acquire()  # ...the one after it keeps the grid, but not closer than 50 ms
    assert abs(clock.t - before - 0.05) < 1e-9


async def test_window_counts_calls_once_on_the_wire_and_pending_ones_as_now() -> None:
    clock = FakeClock()
    window = SlidingWindow(clock=clock, sleep=clock.sleep)
    first = await window.wait(2)
    second = await window.wait(2)
    start = clock.t
    clock.t += 0.5
    first.sent()
    second.finish()  # never marked as sent: counted when the call ended
    await window.wait(2)
    assert abs(clock.t - (start + 1.5)) < 1e-3  # a second after they went on the wire
