"""The client against the simulator: every error class, retries, bans, splitting, no secrets."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import pytest

from etl import errors
from etl.simulator import data
from etl.simulator.server import Simulator, SimulatorConfig
from etl.top import apis
from etl.top.client import TopClient
from tests.helpers import settings_for

IDS = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(60)]


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    simulator = Simulator(SimulatorConfig(missing_rate=0.1))
    await simulator.start()
    yield simulator
    await simulator.stop()


def _existing(ids: list[str], seed: int = 0, rate: float = 0.1) -> set[str]:
    return {i for i in ids if data.exists(seed, i, rate)}


async def test_fetch_by_each_id_kind_returns_the_simulated_orders(sim: Simulator) -> None:
    async with TopClient(settings_for(sim.url)) as client:
        got = await apis.wdk_order_get(client, IDS, "biz", batch_size=20)
        by_tb = await apis.wdk_order_get(
            client, [str(data.TB_BASE + int(i)) for i in IDS[:10]], "tb_biz"
        )
        by_out = await apis.wdk_order_get(client, [f"ele{i}" for i in IDS[:10]], "out_order")
    assert {str(o["biz_order_id"]) for o in got.orders} == _existing(IDS)
    assert set(got.missing) == set(IDS) - _existing(IDS)
    assert not got.failed
    for order in got.orders:
        assert order == data.wdk_order(order["biz_order_id"])
    assert {o["biz_order_id"] for o in by_tb.orders} == {int(i) for i in _existing(IDS[:10])}
    assert {o["biz_order_id"] for o in by_out.orders} == {int(i) for i in _existing(IDS[:10])}
    assert sim.counters.max_batch_seen == 20


@pytest.mark.parametrize("sign_method", ["md5", "hmac", "hmac-sha256"])
@pytest.mark.parametrize("simplify", ["true", "false"])
async def test_every_sign_method_and_shape(sim: Simulator, sign_method: str, simplify: str) -> None:
    s = settings_for(sim.url, top_sign_method=sign_method, top_simplify=simplify)
    async with TopClient(s) as client:
        got = await apis.wdk_order_get(client, IDS[:5], "biz")
        model = await apis.omni_order_query(client, "3031798632", data.omni_order_id(3), "o-3")
    assert sim.counters.signature_failures == 0
    assert [
        o["biz_order_id"] for o in sorted(got.orders, key=lambda o: o["biz_order_id"])
    ] == sorted(int(i) for i in _existing(IDS[:5]))
    if data.exists(0, data.omni_order_id(3), 0.1):
        assert model == data.omni_order(data.omni_order_id(3), "3031798632", "o-3")


@pytest.mark.parametrize(
    "step", ["http_502", "remote_timeout", "truncated", "error:10", "error:15:isp.service-error"]
)
async def test_transient_errors_are_retried_and_succeed(sim: Simulator, step: str) -> None:
    sim.script(step, step)
    async with TopClient(settings_for(sim.url)) as client:
        got = await apis.wdk_order_get(client, IDS[:10], "biz")
    assert {str(o["biz_order_id"]) for o in got.orders} == _existing(IDS[:10])
    assert client.stats.retries == 2
    assert client.stats.calls == 3


async def test_slow_answer_times_out_then_succeeds() -> None:
    sim = Simulator(SimulatorConfig(slow_seconds=2.0))
    await sim.start()
    try:
        sim.script("slow")
        async with TopClient(settings_for(sim.url, top_timeout="0.3")) as client:
            got = await apis.wdk_order_get(client, IDS[:3], "biz")
        assert client.stats.errors["TransportError"] == 1
        assert got.orders
    finally:
        await sim.stop()


async def test_control_characters_in_body_are_tolerated(sim: Simulator) -> None:
    sim.script("control_chars")
    async with TopClient(settings_for(sim.url)) as client:
        got = await apis.wdk_order_get(client, IDS[:5], "biz")
    assert client.stats.retries == 0
    assert any(o["duty_code"].startswith("\x07\x1f") for o in got.orders)


async def test_transient_errors_give_up_after_max_attempts(sim: Simulator) -> None:
    sim.script(*["http_502"] * 10)
    async with TopClient(settings_for(sim.url, top_max_attempts=3)) as client:
        got = await apis.wdk_order_get(client, IDS[:4], "biz")
    assert set(got.failed) == set(IDS[:4])
    assert all(isinstance(e, errors.TransportError) for e in got.failed.values())
    assert client.stats.calls == 3


@pytest.mark.parametrize(
    ("step", "cls", "code"),
    [
        ("error:41:isv.invalid-parameter", errors.CallerError, 41),
        ("error:22", errors.CallerError, 22),
    ],
)
async def test_permanent_errors_surface_with_code_and_request_id(
    sim: Simulator, step: str, cls: type[errors.TopError], code: int
) -> None:
    sim.script(step)
    async with TopClient(settings_for(sim.url)) as client:
        with pytest.raises(cls) as info:
            await client.call(apis.WDK_METHOD, apis.wdk_request("biz", IDS[:2]))
    assert info.value.code == code
    assert info.value.request_id
    assert len(info.value.request_id) == 12
    assert client.stats.calls == 1  # never retried


async def test_wrong_session_is_an_auth_error(sim: Simulator) -> None:
    s = settings_for(sim.url)
    s = s.model_copy(update={"top_session": type(s.top_session)("expired-session")})
    async with TopClient(s) as client:
        with pytest.raises(errors.AuthError) as info:
            await apis.wdk_order_get(client, IDS[:2], "biz")
    assert info.value.code == 27
    assert "ETL_TOP_SESSION" in (errors.AuthError.__doc__ or "")


async def test_wrong_secret_gives_a_clear_signature_error(sim: Simulator) -> None:
    s = settings_for(sim.url)
    s = s.model_copy(update={"top_app_secret": type(s.top_app_secret)("not-the-secret")})
    async with TopClient(s) as client:
        with pytest.raises(errors.SignatureError) as info:
            await client.call(apis.WDK_METHOD, apis.wdk_request("biz", IDS[:2]))
    assert info.value.code == 25
    assert "ETL_TOP_APP_SECRET" in str(info.value.__doc__)
    assert sim.counters.signature_failures == 1
    assert client.stats.calls == 1


async def test_clock_skew_is_retried_once(sim: Simulator) -> None:
    sim.script("error:31")
    async with TopClient(settings_for(sim.url)) as client:
        await client.call(apis.WDK_METHOD, apis.wdk_request("biz", IDS[:2]))
    sim.script("error:31", "error:31")
    async with TopClient(settings_for(sim.url)) as client:
        with pytest.raises(errors.ClockSkew):
            await client.call(apis.WDK_METHOD, apis.wdk_request("biz", IDS[:2]))


async def test_a_short_ban_pauses_every_caller(sim: Simulator) -> None:
    sim.script("ban:1")
    async with TopClient(settings_for(sim.url, concurrency=4)) as client:
        started = time.monotonic()
        results = await asyncio.gather(
            *(client.call(apis.WDK_METHOD, apis.wdk_request("biz", [i])) for i in IDS[:12])
        )
        elapsed = time.monotonic() - started
    assert len(results) == 12
    assert elapsed >= 1.0
    # Only the calls already in flight when the ban began met it; the rest waited.
    assert sim.counters.bans <= 4
    assert client.stats.bans == sim.counters.bans


async def test_qps_cap_is_respected_without_bans() -> None:
    sim = Simulator(SimulatorConfig(qps=20, missing_rate=0.1))
    await sim.start()
    try:
        async with TopClient(settings_for(sim.url, top_qps=20, concurrency=8)) as client:
            got = await apis.wdk_order_get(client, IDS[:60], "biz", batch_size=2)
        assert sim.counters.bans == 0
        assert len(got.orders) == len(_existing(IDS[:60]))
    finally:
        await sim.stop()


async def test_a_long_ban_surfaces_as_rate_limited_and_later_calls_fail_fast(
    sim: Simulator,
) -> None:
    sim.script("quota_ban:3600")
    async with TopClient(settings_for(sim.url, top_ban_threshold=60)) as client:
        with pytest.raises(errors.RateLimited) as info:
            await apis.wdk_order_get(client, IDS[:5], "biz")
        assert info.value.retry_after > 3000
        assert info.value.sub_code == "accesscontrol.limited-by-app-access-count"
        calls = sim.counters.calls
        with pytest.raises(errors.RateLimited):
            await apis.wdk_order_get(client, IDS[:5], "biz")
        assert sim.counters.calls == calls  # did not even ask
        assert client.ban_remaining() > 3000


async def test_bad_ids_are_isolated_by_splitting_the_batch() -> None:
    poison = IDS[7]
    sim = Simulator(SimulatorConfig(missing_rate=0.1, poison_ids=frozenset({poison})))
    await sim.start()
    try:
        async with TopClient(settings_for(sim.url)) as client:
            got = await apis.wdk_order_get(client, IDS[:20], "biz", batch_size=20)
    finally:
        await sim.stop()
    assert set(got.failed) == {poison}
    assert isinstance(got.failed[poison], errors.CallerError)
    assert {str(o["biz_order_id"]) for o in got.orders} == _existing(IDS[:20]) - {poison}
    assert poison not in got.missing


async def test_twenty_percent_faults_every_existing_id_exactly_once() -> None:
    ids = [str(data.FIRST_DEMO_BIZ_ID + 1000 + i) for i in range(2000)]
    faults = {"http_502": 0.05, "remote_timeout": 0.05, "truncated": 0.05, "slow": 0.05}
    sim = Simulator(SimulatorConfig(missing_rate=0.05, faults=faults, slow_seconds=0.3))
    await sim.start()
    try:
        s = settings_for(sim.url, top_max_attempts=12, top_timeout=0.2, concurrency=16)
        async with TopClient(s) as client:
            got = await apis.wdk_order_get(client, ids, "biz", batch_size=20)
    finally:
        await sim.stop()
    returned = [str(o["biz_order_id"]) for o in got.orders]
    assert len(returned) == len(set(returned))
    assert set(returned) == _existing(ids, rate=0.05)
    assert not got.failed
    faults = sum(sim.counters.faults.values())
    assert faults >= 0.12 * sim.counters.calls  # the faults really happened (~18.5 % of calls)
    assert client.stats.retries == client.stats.calls - 100  # 100 batches, each ok once
    assert client.stats.retries <= faults


async def test_no_secret_in_any_debug_log_line(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    s = settings_for(sim.url, top_sign_method="md5")
    secret = s.top_app_secret.get_secret_value()
    session = s.top_session.get_secret_value()
    sim.script("http_502", "error:41:isv.invalid-parameter", "ban:1")
    with caplog.at_level(logging.DEBUG):
        async with TopClient(s) as client:
            await apis.wdk_order_get(client, IDS[:30], "biz", batch_size=10)
            bad = s.model_copy(update={"top_app_secret": type(s.top_app_secret)("wrong")})
            async with TopClient(bad) as other:
                with pytest.raises(errors.SignatureError):
                    await other.call(apis.WDK_METHOD, apis.wdk_request("biz", IDS[:1]))
    text = "\n".join(f"{r.getMessage()} {vars(r)}" for r in caplog.records)
    assert "request_id" in text  # the logs do carry the useful context
    assert secret not in text
    assert session not in text
    assert repr(client).count(secret) == 0


async def test_rejected_credentials_are_never_split_nor_resent(sim: Simulator) -> None:
    """200 ids with a wrong secret: no splitting "to isolate bad ids", and once the first answer
    says the signature is wrong, nothing more is sent (the calls already in flight aside)."""
    s = settings_for(sim.url, concurrency=4)
    s = s.model_copy(update={"top_app_secret": type(s.top_app_secret)("not-the-secret")})
    ids = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(200)]
    async with TopClient(s) as client:
        with pytest.raises(errors.SignatureError) as info:
            await apis.wdk_order_get(client, ids, "biz", batch_size=20)
        assert client.rejected is not None
        with pytest.raises(errors.SignatureError):  # refused locally, not sent again
            await client.call(apis.WDK_METHOD, apis.wdk_request("biz", ids[:1]))
    assert sim.counters.calls <= 4  # at most the calls that were already in flight
    assert "ETL_TOP_APP_SECRET" in info.value.hint()


async def test_unknown_app_key_names_its_setting(sim: Simulator) -> None:
    s = settings_for(sim.url).model_copy(update={"top_app_key": "99999999"})
    async with TopClient(s) as client:
        with pytest.raises(errors.AppKeyError) as info:
            await apis.wdk_order_get(client, IDS[:2], "biz")
    assert "ETL_TOP_APP_KEY" in info.value.hint()


async def test_an_answer_without_a_result_is_retried_never_taken_for_not_found(
    sim: Simulator, caplog: pytest.LogCaptureFixture
) -> None:
    sim.script("no_result", "no_result")
    with caplog.at_level(logging.WARNING, logger="etl.top.client"):
        async with TopClient(settings_for(sim.url)) as client:
            got = await apis.wdk_order_get(client, IDS[:10], "biz")
    assert {str(o["biz_order_id"]) for o in got.orders} == _existing(IDS[:10])
    assert got.missing == sorted(set(IDS[:10]) - _existing(IDS[:10]), key=IDS.index)
    assert client.stats.errors["MalformedResponse"] == 2
    assert client.stats.calls == 3
    malformed = [r for r in caplog.records if r.getMessage() == "malformed answer"]
    assert len(malformed) == 2
    assert "without a result" in malformed[0].__dict__["error"]
    assert malformed[0].__dict__["request_id"]  # the platform's support asks for it


async def test_a_result_that_never_comes_fails_the_ids_not_marks_them_missing(
    sim: Simulator,
) -> None:
    sim.script(*["no_result"] * 10)
    async with TopClient(settings_for(sim.url, top_max_attempts=3)) as client:
        got = await apis.wdk_order_get(client, IDS[:4], "biz")
    assert got.missing == []
    assert set(got.failed) == set(IDS[:4])
    assert all(isinstance(e, errors.MalformedResponse) for e in got.failed.values())


async def test_epoch_millisecond_timestamps_are_accepted(sim: Simulator) -> None:
    import aiohttp

    from etl.top import signing
    from etl.top.client import build_params

    s = settings_for(sim.url)
    params = build_params(apis.WDK_METHOD, apis.wdk_request("biz", IDS[:2]), s)
    params.pop("sign")
    params["timestamp"] = str(int(time.time() * 1000))  # the older official Python SDK's form
    params["sign"] = signing.sign(params, s.top_app_secret.get_secret_value(), s.top_sign_method)
    async with aiohttp.ClientSession() as http, http.post(sim.url, data=params) as resp:
        body = await resp.json()
    assert "error_response" not in body, body
    assert body["result"]["return_code"] == "SUCCESS"


async def test_control_characters_are_a_property_of_the_order() -> None:
    """The same orders always carry the same raw control characters, so re-fetching unchanged
    orders gives identical bytes (a second demo reports 0 changed)."""
    sim = Simulator(SimulatorConfig(missing_rate=0.0, faults={"control_chars": 0.3}))
    await sim.start()
    try:
        async with TopClient(settings_for(sim.url)) as client:
            first = await apis.wdk_order_get(client, IDS, "biz", batch_size=20)
            second = await apis.wdk_order_get(client, list(reversed(IDS)), "biz", batch_size=7)
    finally:
        await sim.stop()

    def by_id(orders: list[dict[str, object]]) -> dict[object, object]:
        return {o["biz_order_id"]: o for o in orders}

    assert by_id(first.orders) == by_id(second.orders)
    dirty = [o for o in first.orders if str(o["duty_code"]).startswith("\x07\x1f")]
    assert 5 < len(dirty) < 35  # about 30 % of 60
    assert client.stats.retries == 0


@pytest.mark.parametrize(
    ("step", "calls", "retries"),
    [("truncated", 2, 1), ("error:10", 2, 1), ("error:41:isv.invalid-parameter", 3, 0)],
)
async def test_answers_read_in_the_normalizer_pool_are_retried_and_split_as_here(
    sim: Simulator, step: str, calls: int, retries: int
) -> None:
    """The sync loop reads wdk answers in the normalizer's processes (read_wdk_body through
    call_body): a malformed or refused answer raised there is retried, or its batch split,
    exactly as when the client reads it itself."""
    from datetime import UTC, datetime

    from etl.normalize.pool import Fetched, Normalizer, read_wdk_body

    at = datetime.now(UTC)
    sim.script(step)
    with Normalizer(1) as normalizer:
        async with TopClient(settings_for(sim.url)) as client:

            async def body_read(body: bytes) -> list[Fetched]:
                answer = await asyncio.get_running_loop().run_in_executor(
                    normalizer.executor, read_wdk_body, body, "biz_order_id", at, True
                )
                return answer.orders

            async def read(business: object) -> list[Fetched]:
                return await client.call_body(apis.WDK_METHOD, business, body_read)  # type: ignore[arg-type]

            got = await apis.wdk_lookup(
                read,
                IDS[:20],
                "biz",
                batch_size=20,
                filters=None,
                echo=lambda f: f.echo,
                identity=lambda f: f.biz,
            )
    assert {f.echo for f in got.orders} == _existing(IDS[:20])
    assert all(f.order is not None and f.order.rows for f in got.orders)
    assert set(got.missing) == set(IDS[:20]) - _existing(IDS[:20])
    assert not got.failed
    assert (client.stats.calls, client.stats.retries) == (calls, retries)


@pytest.mark.parametrize("simplify", ["true", "false"])
async def test_prerendered_orders_are_served_as_they_are_generated(simplify: str) -> None:
    """`etl simulate --prerender` (benchmarks) changes the simulator's CPU, not its answers:
    the same orders, the message stream's moves and filters included."""
    sim = Simulator(SimulatorConfig(missing_rate=0.1))
    assert sim.prerender(data.FIRST_DEMO_BIZ_ID, 40) == len(_existing(IDS[:40]))
    moved = int(sorted(_existing(IDS[:40]))[0])
    sim.tmc.status[moved] = "REFUNDED"  # moved on by the message stream after it was rendered
    await sim.start()
    try:
        async with TopClient(settings_for(sim.url, top_simplify=simplify)) as client:
            got = await apis.wdk_order_get(client, IDS, "biz", batch_size=20)
            store = data.wdk_order(moved)["store_id"]
            filtered = await apis.wdk_order_get(
                client, IDS[:40], "biz", filters={"store_id": store}
            )
    finally:
        await sim.stop()
    assert {str(o["biz_order_id"]) for o in got.orders} == _existing(IDS)
    for order in got.orders:
        assert order == sim.current_wdk_order(order["biz_order_id"])
    assert next(o for o in got.orders if o["biz_order_id"] == moved)["order_status"] == "REFUNDED"
    assert filtered.orders
    assert {o["store_id"] for o in filtered.orders} == {store}
