"""A TOP gateway simulator: a real aiohttp server speaking the platform's protocol.

It checks what the gateway checks (app key, session, timestamp skew, method, required
parameters, the signature for md5 / hmac / hmac-sha256), serves deterministic orders
(:mod:`etl.simulator.data`) in both JSON shapes, enforces a QPS cap per app key with bans that
last, and injects faults at configurable rates. Its counters tell tests and benchmarks what
happened. ``Simulator`` runs on the caller's event loop; ``SimulatorThread`` on its own thread
(for tests that block their loop or start other processes).
"""

from __future__ import annotations

import asyncio
import bisect
import math
import random
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson
from aiohttp import web

from etl import chinatime
from etl.settings import DEMO_APP_KEY, DEMO_APP_SECRET, DEMO_SESSION
from etl.simulator import data
from etl.simulator.tmc import CONFIRM_METHOD, CONSUME_METHOD, TmcConfig, TmcError, TmcStream
from etl.top import envelope, signing
from etl.top.apis import ID_KINDS, OMNI_METHOD, WDK_METHOD

# control_chars is a property of the order (the same orders always carry the same raw control
# characters, so re-fetching unchanged data is byte-identical); the others hit random answers.
FAULT_KINDS = ("http_502", "remote_timeout", "truncated", "control_chars", "slow", "no_result")
CONTROL_CHARS = "\x07\x1f"  # put raw (unescaped) into the body of the orders that carry them
TIMESTAMP_SKEW = 600  # seconds the gateway tolerates


@dataclass
class SimulatorConfig:
    app_key: str = DEMO_APP_KEY
    app_secret: str = DEMO_APP_SECRET
    session: str = DEMO_SESSION
    seed: int = 0
    missing_rate: float = 0.05  # share of ids that do not exist
    qps: float | None = None  # per app key; None = no cap
    ban_seconds: float = 2.0  # a QPS ban lasts this long
    latency_ms: float = 0.0  # added to every answer
    jitter_ms: float = 0.0  # uniform extra latency
    faults: dict[str, float] = field(default_factory=dict)  # kind -> rate, see FAULT_KINDS
    slow_seconds: float = 1.0
    quota_ban_rate: float = 0.0  # share of calls that start a long (quota) ban
    quota_ban_seconds: float = 3600.0
    max_batch: int = 100  # ids per wdk call before it is refused
    poison_ids: frozenset[str] = frozenset()  # ids that make their whole batch a caller error
    epoch: int = 0  # bump to make a share (change_rate) of orders change
    change_rate: float = 0.1
    # How flow-control bans spell their wait: "this_ban" ("This ban will last for N more
    # seconds") or "gateway" ("<sub_code>, will last N more seconds"); both are seen in practice.
    ban_spelling: str = "this_ban"
    tmc: TmcConfig = field(default_factory=TmcConfig)  # the message service (etl.simulator.tmc)

    def __repr__(self) -> str:
        return f"SimulatorConfig(app_key={self.app_key!r}, seed={self.seed}, qps={self.qps})"


@dataclass
class Counters:
    calls: int = 0
    ok: int = 0
    bans: int = 0  # answers with a flow-control error
    bans_started: int = 0
    signature_failures: int = 0
    errors: Counter[str] = field(default_factory=Counter)  # code -> count
    faults: Counter[str] = field(default_factory=Counter)  # kind -> count
    ids_requested: int = 0
    orders_served: int = 0
    by_method: Counter[str] = field(default_factory=Counter)
    max_batch_seen: int = 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "calls": self.calls,
            "ok": self.ok,
            "bans": self.bans,
            "bans_started": self.bans_started,
            "signature_failures": self.signature_failures,
            "errors": dict(self.errors),
            "faults": dict(self.faults),
            "ids_requested": self.ids_requested,
            "orders_served": self.orders_served,
            "by_method": dict(self.by_method),
        }


class GatewayError(Exception):
    def __init__(self, code: int, msg: str, sub_code: str | None = None, sub_msg: str = "") -> None:
        super().__init__(msg)
        self.code, self.msg, self.sub_code, self.sub_msg = code, msg, sub_code, sub_msg


_ESCAPED_CONTROL = orjson.dumps(CONTROL_CHARS)[1:-1]


class _AppLimiter:
    """The QPS cap of one app key as a strict sliding window, and its ban state.

    A call is over the cap when the calls accepted in the second before it (by arrival time,
    taken before the body is read or any latency is simulated) already number ``qps``: no window
    of one second, wherever it starts, ever holds more than ``qps`` accepted calls. (A token
    bucket with a one-second burst would let up to twice that through some windows.)
    """

    def __init__(self, qps: float) -> None:
        self.qps = qps
        self.accepted: deque[float] = deque()
        self.ban_until = 0.0
        self.ban_sub_code = ""

    def take(self, arrived: float) -> bool:
        if math.isinf(self.qps):
            return True
        while self.accepted and self.accepted[0] <= arrived - 5.0:  # keep a few seconds
            self.accepted.popleft()
        in_window = len(self.accepted) - bisect.bisect_right(self.accepted, arrived - 1.0)
        if in_window + 1 > self.qps:
            return False
        bisect.insort(self.accepted, arrived)  # arrivals can be checked slightly out of order
        return True


class Simulator:
    """The gateway. ``await sim.start()``, then point the client at ``sim.url``."""

    def __init__(self, config: SimulatorConfig | None = None) -> None:
        self.config = config or SimulatorConfig()
        self.counters = Counters()
        self._rng = random.Random(self.config.seed)
        self._limiters: dict[str, _AppLimiter] = {}
        self._script: list[str] = []
        self._runner: web.AppRunner | None = None
        self.tmc = TmcStream(self.config.tmc, self.config.seed, self._base_order)
        self._rendered: dict[int, bytes] = {}  # see prerender
        self._rendered_for: tuple[int, int, float] | None = None
        self._tmc_task: asyncio.Task[None] | None = None
        self.url = ""
        self.app = web.Application(client_max_size=8 * 1024 * 1024)
        self.app.router.add_route("*", "/router/rest", self._handle)
        self.app.router.add_get("/counters", self._counters)

    def prerender(self, first: int, count: int) -> int:
        """Serialize the wdk orders ``first`` .. ``first + count - 1`` now (simplified shape),
        so that serving them later costs little CPU: for benchmarks, where the simulator shares
        the machine with what it measures (the real platform costs the caller none). Orders
        the message stream moved, filtered queries, the default shape, another seed / epoch and
        faults that edit orders are served the normal way. Returns how many exist."""
        cfg = self.config
        self._rendered_for = (cfg.seed, cfg.epoch, cfg.change_rate)
        self._rendered = {
            biz: orjson.dumps(data.wdk_order(biz, *self._rendered_for))
            for biz in range(first, first + count)
            if self._exists(str(biz))
        }
        return len(self._rendered)

    def _prerendered(self, simplify: bool, query: dict[str, Any]) -> dict[int, bytes]:
        """The pre-serialized orders usable for this call (none unless they are exact)."""
        cfg = self.config
        usable = (
            simplify
            and self._rendered_for == (cfg.seed, cfg.epoch, cfg.change_rate)
            and cfg.faults.get("control_chars", 0.0) <= 0
            and all(query.get(n) in (None, "") for n in ("order_from", "shop_id", "store_id"))
        )
        return self._rendered if usable else {}

    # ------------------------------------------------------------------------------ lifecycle

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        self._runner = web.AppRunner(self.app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = int(self._runner.addresses[0][1]) if self._runner.addresses else port
        self.url = f"http://{host}:{bound}/router/rest"
        if self.config.tmc.rate > 0:
            self.start_stream()
        return self.url

    def start_stream(self, seconds: float | None = None) -> None:
        """Start publishing order changes (on this loop), for ``seconds`` or until stopped."""
        self._tmc_task = asyncio.get_running_loop().create_task(self.tmc.run(seconds))

    async def stop(self) -> None:
        self.tmc.stop_stream()
        if self._tmc_task is not None:
            await self._tmc_task
            self._tmc_task = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --------------------------------------------------------------------------- test knobs

    def ban(self, seconds: float, *, quota: bool = False, app_key: str | None = None) -> None:
        """Ban ``app_key`` (default: the configured one) for ``seconds`` from now."""
        limiter = self._limiter(app_key or self.config.app_key)
        limiter.ban_until = time.monotonic() + seconds
        limiter.ban_sub_code = (
            "accesscontrol.limited-by-app-access-count"
            if quota
            else "accesscontrol.limited-by-app-api-access-count"
        )
        self.counters.bans_started += 1

    def script(self, *steps: str) -> None:
        """Force what the next calls meet, one step per call, before anything random.

        A step is a fault kind (``http_502``, ``remote_timeout``, ``truncated``, ``control_chars``,
        ``slow``, ``no_result``), ``ban:SECONDS``, ``quota_ban:SECONDS``, ``daily_ban`` (no wait
        given), ``error:CODE[:SUB_CODE]``, or ``ok``.
        """
        self._script.extend(steps)

    def ban_remaining(self, app_key: str | None = None) -> float:
        return max(0.0, self._limiter(app_key or self.config.app_key).ban_until - time.monotonic())

    def _limiter(self, app_key: str) -> _AppLimiter:
        lim = self._limiters.get(app_key)
        if lim is None:
            lim = self._limiters[app_key] = _AppLimiter(self.config.qps or math.inf)
        return lim

    # ------------------------------------------------------------------------------- serving

    async def _counters(self, request: web.Request) -> web.Response:
        return web.json_response({**self.counters.as_dict(), "tmc": self.tmc.counters.as_dict()})

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        arrived = time.monotonic()  # the QPS cap counts arrivals, not when they are looked at
        self.counters.calls += 1
        params: dict[str, str] = dict(request.query)
        if request.method == "POST":
            form = await request.post()
            params.update({k: str(v) for k, v in form.items()})
        cfg = self.config
        step = self._next_step()
        delay = (cfg.latency_ms + self._rng.uniform(0, cfg.jitter_ms)) / 1000
        if self._fault("slow", step):
            delay += cfg.slow_seconds
        if delay > 0:
            await asyncio.sleep(delay)
        if self._fault("http_502", step):
            return web.Response(status=502, text="<html>502 Bad Gateway</html>")
        if self._fault("no_result", step):  # a well-formed envelope that carries nothing
            method = params.get("method", "")
            return web.json_response(
                {envelope.response_key(method): {"request_id": self._request_id()}}
            )
        method = params.get("method", "")
        simplify = params.get("simplify", "").lower() == "true"
        try:
            self._check(params)
            self._scripted_error(step, params["app_key"])
            self._flow_control(params["app_key"], arrived)
            if self._fault("remote_timeout", step):
                raise GatewayError(
                    15,
                    "Remote service error",
                    "isp.top-remote-connection-timeout",
                    "远程服务调用超时",
                )
            payload = self._dispatch(method, params)
        except GatewayError as err:
            self.counters.errors[str(err.code)] += 1
            return self._error(err)
        self.counters.ok += 1
        self.counters.by_method[method] += 1
        payload["request_id"] = self._request_id()
        dirty = self._mark_control_chars(payload) if not step else 0
        body_obj = (
            payload if simplify else {envelope.response_key(method): data.wrap_lists(payload)}
        )
        body = orjson.dumps(body_obj)
        if dirty:
            body = body.replace(_ESCAPED_CONTROL, CONTROL_CHARS.encode())
        elif self._fault("control_chars", step):
            body = body.replace(b'"duty_code":"', b'"duty_code":"\x07\x1f', 1)
        if self._fault("truncated", step):
            body = body[: max(1, len(body) // 2)]
        return web.Response(body=body, content_type="application/json", charset="utf-8")

    def _mark_control_chars(self, payload: dict[str, Any]) -> int:
        """Prefix the duty_code of the wdk orders that carry raw control characters (a fixed
        share ``faults['control_chars']`` of orders, chosen by id); returns how many."""
        rate = self.config.faults.get("control_chars", 0.0)
        result = payload.get("result")
        if rate <= 0 or not isinstance(result, dict):
            return 0
        n = 0
        for order in result.get("orders") or []:
            if data._h(self.config.seed, "control_chars", order["biz_order_id"]) % 10_000 < (
                rate * 10_000
            ):
                order["duty_code"] = CONTROL_CHARS + str(order.get("duty_code") or "")
                n += 1
        if n:
            self.counters.faults["control_chars"] += n
        return n

    def _next_step(self) -> str:
        return self._script.pop(0) if self._script else ""

    def _fault(self, kind: str, step: str = "") -> bool:
        if step:
            if step == kind:
                self.counters.faults[kind] += 1
                return True
            return False
        rate = self.config.faults.get(kind, 0.0)
        if rate > 0 and self._rng.random() < rate:
            self.counters.faults[kind] += 1
            return True
        return False

    def _request_id(self) -> str:
        return "".join(self._rng.choice("abcdefghijklmnopqrstuvwxyz0123456789") for _ in range(12))

    def _error(self, err: GatewayError) -> web.Response:
        doc: dict[str, Any] = {"code": err.code, "msg": err.msg}
        if err.sub_code:
            doc["sub_code"] = err.sub_code
        if err.sub_msg:
            doc["sub_msg"] = err.sub_msg
        doc["request_id"] = self._request_id()
        return web.Response(
            body=orjson.dumps({"error_response": doc}), content_type="application/json"
        )

    def _scripted_error(self, step: str, app_key: str) -> None:
        kind, _, arg = step.partition(":")
        if kind in ("ban", "quota_ban"):
            self.ban(
                float(arg or self.config.ban_seconds), quota=kind == "quota_ban", app_key=app_key
            )
        elif kind == "daily_ban":  # the daily quota, spent: no wait given (it lasts to midnight)
            self.counters.bans += 1
            raise GatewayError(
                7,
                "App Call Limited",
                "accesscontrol.limited-by-app-access-count",
                "应用调用次数超限",
            )
        elif kind == "error":
            code, _, sub_code = arg.partition(":")
            raise GatewayError(int(code), "Scripted error", sub_code or None, "scripted")

    def _check(self, p: dict[str, str]) -> None:
        cfg = self.config
        if not p.get("method"):
            raise GatewayError(21, "Missing Method")
        if not p.get("app_key"):
            raise GatewayError(28, "Missing App Key")
        if p["app_key"] != cfg.app_key:
            raise GatewayError(29, "Invalid App Key")
        if not p.get("session"):
            raise GatewayError(26, "Missing Session")
        if p["session"] != cfg.session:
            raise GatewayError(27, "Invalid session", "invalid-sessionkey", "SessionKey非法")
        self._check_timestamp(p.get("timestamp", ""))
        if p.get("sign_method", "md5") not in signing.SIGN_METHODS:
            raise GatewayError(25, "Invalid Signature", sub_msg="unsupported sign_method")
        if not p.get("sign"):
            raise GatewayError(24, "Missing Signature")
        if not signing.verify(p, cfg.app_secret):
            self.counters.signature_failures += 1
            raise GatewayError(25, "Invalid Signature")
        if p["method"] not in (WDK_METHOD, OMNI_METHOD, CONSUME_METHOD, CONFIRM_METHOD):
            raise GatewayError(22, "Invalid Method")
        if p.get("format", "xml") != "json":
            raise GatewayError(
                41, "Invalid Arguments", "isv.invalid-parameter", "format:仅模拟json"
            )
        if p.get("v") != "2.0":
            raise GatewayError(41, "Invalid Arguments", "isv.invalid-parameter", "v:仅支持2.0")

    def _check_timestamp(self, text: str) -> None:
        try:
            if text.isdigit():  # epoch milliseconds, as the platform's older Python SDK sends
                sent = datetime.fromtimestamp(int(text) / 1000, chinatime.CHINA)
            else:
                sent = chinatime.parse(text)
        except (ValueError, OverflowError, OSError):
            raise GatewayError(
                31, "Invalid Timestamp", "isv.timestamp-limit-error", "timestamp格式错误"
            ) from None
        skew = abs((datetime.now(chinatime.CHINA) - sent).total_seconds())
        if skew > TIMESTAMP_SKEW:
            raise GatewayError(
                31,
                "Invalid Timestamp",
                "isv.timestamp-limit-error",
                f"时间戳误差超过10分钟 ({skew:.0f}s)",
            )

    def _flow_control(self, app_key: str, arrived: float) -> None:
        lim = self._limiter(app_key)
        now = time.monotonic()
        if self.config.quota_ban_rate and self._rng.random() < self.config.quota_ban_rate:
            self.counters.faults["quota_ban"] += 1
            self.ban(self.config.quota_ban_seconds, quota=True, app_key=app_key)
        elif lim.ban_until <= arrived and not lim.take(arrived):
            self.ban(self.config.ban_seconds, app_key=app_key)
        if lim.ban_until > now or lim.ban_until > time.monotonic():
            self.counters.bans += 1
            left = max(1, math.ceil(lim.ban_until - time.monotonic()))
            wait = (
                f"{lim.ban_sub_code}, will last {left} more seconds"
                if self.config.ban_spelling == "gateway"
                else f"This ban will last for {left} more seconds"
            )
            raise GatewayError(7, "App Call Limited", lim.ban_sub_code, wait)

    # ------------------------------------------------------------------------------- the APIs

    def _dispatch(self, method: str, p: dict[str, str]) -> dict[str, Any]:
        if method == WDK_METHOD:
            return self._wdk(p)
        if method in (CONSUME_METHOD, CONFIRM_METHOD):
            try:
                return self.tmc.consume(p) if method == CONSUME_METHOD else self.tmc.confirm(p)
            except TmcError as err:
                raise GatewayError(err.code, err.msg, err.sub_code, err.sub_msg) from None
        return self._omni(p)

    def _wdk(self, p: dict[str, str]) -> dict[str, Any]:
        raw = p.get("id_list_query_req", "")
        try:
            query = orjson.loads(raw) if raw else {}
        except orjson.JSONDecodeError:
            raise GatewayError(
                15,
                "Remote service error",
                "isp.top-mapping-parse-error",
                "id_list_query_req不是合法的JSON",
            ) from None
        if not isinstance(query, dict):
            raise GatewayError(41, "Invalid Arguments", "isv.invalid-parameter", "非法参数")
        wanted: list[tuple[str, str]] = []
        for id_kind in ID_KINDS.values():
            values = query.get(id_kind.request_list) or []
            if not isinstance(values, list):
                raise GatewayError(41, "Invalid Arguments", "isv.invalid-parameter", "非法参数")
            wanted.extend((id_kind.name, str(v)) for v in values)
        if not wanted:
            raise GatewayError(
                40, "Missing Required Arguments", "isv.missing-parameter", "id list is empty"
            )
        if len(wanted) > self.config.max_batch:
            raise GatewayError(
                15,
                "Remote service error",
                "isv.invalid-parameter",
                f"id list too long (max {self.config.max_batch})",
            )
        if any(value in self.config.poison_ids for _, value in wanted):
            raise GatewayError(15, "Remote service error", "isv.invalid-parameter", "非法参数")
        self.counters.ids_requested += len(wanted)
        self.counters.max_batch_seen = max(self.counters.max_batch_seen, len(wanted))
        orders: list[Any] = []
        seen: set[int] = set()
        rendered = self._prerendered(p.get("simplify", "").lower() == "true", query)
        for kind, value in wanted:
            biz = data.biz_id_for(kind, value)
            if biz is None or biz in seen or not self._exists(str(biz)):
                continue
            text = rendered.get(biz)
            if text is not None and biz not in self.tmc.status:  # not moved by the stream
                seen.add(biz)
                orders.append(orjson.Fragment(text))
                continue
            order = self.tmc.apply(
                data.wdk_order(biz, self.config.seed, self.config.epoch, self.config.change_rate)
            )
            if self._matches(order, query):
                seen.add(biz)
                orders.append(order)
        self.counters.orders_served += len(orders)
        return {
            "result": {
                "orders": orders,
                "return_code": "SUCCESS",
                "return_msg": "success",
                "total_number": len(orders),
            }
        }

    @staticmethod
    def _matches(order: dict[str, Any], query: dict[str, Any]) -> bool:
        for name in ("order_from", "shop_id", "store_id"):
            want = query.get(name)
            if want not in (None, "") and str(order.get(name)) != str(want):
                return False
        return True

    def _base_order(self, biz: int) -> dict[str, Any] | None:
        """The generated order (before the message stream moved it), None if it does not exist."""
        if not self._exists(str(biz)):
            return None
        cfg = self.config
        return data.wdk_order(biz, cfg.seed, cfg.epoch, cfg.change_rate)

    def current_wdk_order(self, biz: int) -> dict[str, Any] | None:
        """The order the simulator serves for ``biz`` now (tests compare the tables to it)."""
        order = self._base_order(biz)
        return self.tmc.apply(order) if order is not None else None

    def _exists(self, key: str) -> bool:
        return data.exists(self.config.seed, key, self.config.missing_rate)

    def _omni(self, p: dict[str, str]) -> dict[str, Any]:
        missing = [n for n in ("user_id", "order_id", "out_order_id") if not p.get(n)]
        if missing:
            raise GatewayError(
                40,
                "Missing Required Arguments",
                "isv.missing-parameter",
                f"{','.join(missing)}:必选输入参数不能为空",
            )
        self.counters.ids_requested += 1
        order_id = p["order_id"]
        if not order_id.isdigit() or not self._exists(order_id):
            return {
                "result": {
                    "success": False,
                    "msg_code": "daogoubao.order-not-exist",
                    "msg_info": "订单不存在",
                }
            }
        model = data.omni_order(
            order_id,
            p["user_id"],
            p["out_order_id"],
            self.config.seed,
            self.config.epoch,
            self.config.change_rate,
        )
        self.counters.orders_served += 1
        return {"result": {"model": model, "msg_code": "", "msg_info": "", "success": True}}


class SimulatorThread:
    """A Simulator on its own thread and event loop; ``with SimulatorThread(cfg) as sim:``."""

    def __init__(self, config: SimulatorConfig | None = None, port: int = 0) -> None:
        self.sim = Simulator(config)
        self._port = port
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="top-sim")
        self.url = ""

    @property
    def counters(self) -> Counters:
        return self.sim.counters

    @property
    def config(self) -> SimulatorConfig:
        return self.sim.config

    def start(self) -> str:
        self._thread.start()
        fut = asyncio.run_coroutine_threadsafe(self.sim.start(port=self._port), self._loop)
        self.url = fut.result(timeout=10)
        return self.url

    def stop(self) -> None:
        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(self.sim.stop(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._loop.close()

    def __enter__(self) -> SimulatorThread:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
