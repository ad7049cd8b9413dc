"""TopClient: one shared aiohttp session, signing, timeouts, retries, flow control, logging.

This module (with ``apis``) is the only place aiohttp is used by the client side; aiohttp and
asyncio errors are translated into :mod:`etl.errors` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from types import TracebackType
from typing import Any, Self, TypeVar
from urllib.parse import urlencode

import aiohttp
import orjson

from etl import chinatime, errors
from etl.settings import Settings
from etl.top import envelope, signing
from etl.top.ratelimit import BanTooLong, FlowControl, Ticket, shared

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_BAN_WAITS = 50  # short bans waited out per call before giving up
USER_AGENT = "etl-top-client/0.1"
FORM = {"Content-Type": "application/x-www-form-urlencoded; charset=UTF-8"}


@dataclass
class CallStats:
    """Counters of one client (or one run): what the platform saw from us."""

    calls: int = 0
    retries: int = 0
    bans: int = 0
    errors: Counter[str] = field(default_factory=Counter)

    def snapshot(self) -> CallStats:
        return CallStats(self.calls, self.retries, self.bans, Counter(self.errors))


def encode_value(value: Any) -> str | None:
    """A business parameter as the text the gateway expects (objects as compact JSON)."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        raise TypeError("never send floats to the gateway (money is integer fen)")
    if isinstance(value, Mapping | list | tuple):
        return orjson.dumps(_drop_empty(value)).decode()
    raise TypeError(f"cannot send a {type(value).__name__}")


def _drop_empty(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {k: _drop_empty(v) for k, v in value.items() if not _empty(v)}
    if isinstance(value, list | tuple):
        return [_drop_empty(v) for v in value]
    return value


def _empty(value: Any) -> bool:
    return (
        value is None
        or (isinstance(value, str | list | tuple | dict) and not value)
        or (isinstance(value, str) and not value.strip())
    )


def build_params(
    method: str, business: Mapping[str, Any], settings: Settings, now: datetime | None = None
) -> dict[str, str]:
    """System + business parameters, empties dropped, signed (pure)."""
    params: dict[str, str | None] = {
        "method": method,
        "app_key": settings.top_app_key,
        "session": settings.top_session.get_secret_value(),
        "timestamp": chinatime.now_text(now),
        "format": "json",
        "v": "2.0",
        "sign_method": settings.top_sign_method,
        "simplify": "true" if settings.top_simplify else None,
    }
    for name, value in business.items():
        params[name] = encode_value(value)
    sendable = {k: v for k, v in params.items() if v is not None and not signing.is_empty(v)}
    sendable["sign"] = signing.sign(
        sendable, settings.top_app_secret.get_secret_value(), settings.top_sign_method
    )
    return sendable


def backoff(attempt: int, base: float, cap: float, rng: random.Random) -> float:
    """Full jitter: uniform in [0, min(cap, base * 2**(attempt-1))]."""
    return rng.uniform(0.0, min(cap, base * 2 ** max(0, attempt - 1)))


class TopClient:
    """Calls TOP methods. Use as ``async with TopClient(settings) as client``."""

    def __init__(
        self,
        settings: Settings,
        *,
        session: aiohttp.ClientSession | None = None,
        flow: FlowControl | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.settings = settings
        self._session = session
        self._own_session = session is None
        self._flow = flow
        self._rng = rng or random.Random()
        self.stats = CallStats()
        # Once the platform rejects our credentials, no further call is sent: they are a property
        # of the configuration, so every other call would be rejected too (and count against us).
        self.rejected: errors.CredentialsRejected | None = None

    def __repr__(self) -> str:
        return f"TopClient(url={self.settings.top_url!r}, app_key={self.settings.top_app_key!r})"

    @property
    def flow(self) -> FlowControl:
        if self._flow is None:
            s = self.settings
            self._flow = shared(s.top_app_key, s.top_qps, s.concurrency)
        return self._flow

    async def __aenter__(self) -> Self:
        if self._session is None:
            s = self.settings
            timeout = aiohttp.ClientTimeout(
                total=None, sock_connect=s.top_connect_timeout, sock_read=s.top_timeout
            )
            connector = aiohttp.TCPConnector(limit=max(8, s.concurrency * 2), ttl_dns_cache=300)
            self._session = aiohttp.ClientSession(
                timeout=timeout,
                connector=connector,
                headers={"User-Agent": USER_AGENT},
                trace_configs=[_on_the_wire()],
            )
        _ = self.flow
        return self

    async def __aexit__(
        self, et: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._session is not None and self._own_session:
            await self._session.close()
        self._session = None

    def ban_remaining(self) -> float:
        return self.flow.gate.remaining()

    def clear_rejection(self) -> None:
        """Allow calls again after a credentials rejection (for a probe, or after a fix)."""
        self.rejected = None

    async def call(self, method: str, business: Mapping[str, Any]) -> dict[str, Any]:
        """One logical call: retried, paced and ban-aware. Returns the payload (simplified shape).

        Raises the classified :class:`errors.TopError` when retrying cannot help or the attempts
        are used up, and :class:`errors.RateLimited` when a ban is longer than the threshold.
        """
        return await self.call_parsed(method, business, _identity)

    async def call_parsed(
        self, method: str, business: Mapping[str, Any], parse: Callable[[dict[str, Any]], T]
    ) -> T:
        """:meth:`call`, with ``parse`` applied to the payload inside the retry loop: an answer
        that ``parse`` finds malformed (:class:`errors.MalformedResponse`) is retried like any
        transient error, and never taken for an empty result."""

        async def read(body: bytes) -> T:
            return envelope.parsed(body, method, parse)

        return await self.call_body(method, business, read)

    async def call_body(
        self, method: str, business: Mapping[str, Any], read: Callable[[bytes], Awaitable[T]]
    ) -> T:
        """:meth:`call_parsed` for a caller that reads the answer's body itself (e.g. in another
        process, see :func:`etl.normalize.pool.read_wdk_body`): ``read(body)`` raises the
        classified :class:`errors.TopError` of an error envelope or a malformed answer, and is
        retried like :meth:`call_parsed`. It runs after the call's concurrency slot is freed."""
        s = self.settings
        attempt = 0
        ban_waits = 0
        clock_retried = False
        while True:
            try:
                if self.rejected is not None:
                    raise self.rejected
                async with self.flow.slot(max_ban_wait=s.top_ban_threshold) as ticket:
                    if self.rejected is not None:
                        raise self.rejected
                    body = await self._once(method, business, ticket)
                return await self._read(method, body, read)
            except BanTooLong as exc:
                raise errors.RateLimited(
                    "app key is banned (flow control)", retry_after=exc.remaining, method=method
                ) from None
            except errors.RateLimited as exc:
                self.stats.bans += 1
                self.flow.gate.ban(exc.retry_after + self._rng.uniform(0.05, 0.25))
                log.warning("flow-control ban: all callers pause", extra=_err_context(exc))
                ban_waits += 1
                if exc.retry_after > s.top_ban_threshold or ban_waits > MAX_BAN_WAITS:
                    raise
            except errors.CredentialsRejected as exc:
                # Said once by whoever stops on it (the command's last line, or the worker).
                log.debug("credentials rejected", extra=_err_context(exc))
                if self.rejected is None:
                    self.rejected = exc
                raise
            except errors.ClockSkew as exc:
                log.error(
                    "gateway says our clock is off by over 10 minutes; check this host's time",
                    extra=_err_context(exc),
                )
                if clock_retried:
                    raise
                clock_retried = True
            except errors.TopError as exc:
                attempt += 1
                if isinstance(exc, errors.MalformedResponse):
                    log.warning("malformed answer", extra=_err_context(exc, attempt))
                if not exc.retryable or attempt >= s.top_max_attempts:
                    log.warning("call failed for good", extra=_err_context(exc, attempt))
                    raise
                self.stats.retries += 1
                delay = backoff(attempt, s.top_backoff_base, s.top_backoff_max, self._rng)
                log.debug("retrying after %.2fs", delay, extra=_err_context(exc, attempt))
                await asyncio.sleep(delay)

    async def _read(self, method: str, body: bytes, read: Callable[[bytes], Awaitable[T]]) -> T:
        try:
            return await read(body)
        except errors.TopError as exc:
            exc.method = exc.method or method
            self.stats.errors[exc.error_class] += 1
            raise

    async def _once(
        self, method: str, business: Mapping[str, Any], ticket: Ticket | None = None
    ) -> bytes:
        """One HTTP exchange: the body of an HTTP 200 answer (read by the caller)."""
        if self._session is None:
            raise RuntimeError("use TopClient as an async context manager")
        # the form encoded here, once: aiohttp's FormData costs ~0.3 ms more a call (measured)
        form = urlencode(build_params(method, business, self.settings)).encode()
        self.stats.calls += 1
        started = time.monotonic()
        try:
            async with self._session.post(
                self.settings.top_url, data=form, headers=FORM, trace_request_ctx=ticket
            ) as resp:
                body = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, TimeoutError) as exc:
            err = errors.TransportError(
                f"{exc.__class__.__name__}: {exc}".rstrip(": "), method=method
            )
            self.stats.errors[err.error_class] += 1
            raise err from exc
        elapsed_ms = round((time.monotonic() - started) * 1000, 1)
        try:
            if status >= 500 or status == 429:
                raise errors.TransportError(f"HTTP {status} from gateway", method=method)
            if status != 200:
                raise errors.CallerError(f"HTTP {status} from gateway", method=method)
        except errors.TopError as exc:
            self.stats.errors[exc.error_class] += 1
            raise
        log.debug("call answered", extra={"method": method, "ms": elapsed_ms, "bytes": len(body)})
        return body


def _identity(payload: dict[str, Any]) -> dict[str, Any]:
    return payload


def _on_the_wire() -> aiohttp.TraceConfig:
    """Tells a call's :class:`Ticket` when its request body is written to the socket: the
    shared quota's one-second window counts calls from then."""

    async def chunk_sent(
        session: aiohttp.ClientSession, ctx: Any, params: aiohttp.TraceRequestChunkSentParams
    ) -> None:
        ticket = ctx.trace_request_ctx
        if isinstance(ticket, Ticket):
            ticket.sent()

    trace = aiohttp.TraceConfig()
    trace.on_request_chunk_sent.append(chunk_sent)
    return trace


def _err_context(exc: errors.TopError, attempt: int | None = None) -> dict[str, Any]:
    ctx: dict[str, Any] = {
        "method": exc.method,
        "error_class": exc.error_class,
        "code": exc.code,
        "sub_code": exc.sub_code,
        "request_id": exc.request_id,
        "error": str(exc),
    }
    if attempt is not None:
        ctx["attempt"] = attempt
    return {k: v for k, v in ctx.items() if v is not None}
