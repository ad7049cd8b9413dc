"""The two APIs: request builders, result interpretation and batch splitting.

``alibaba.wdk.order.get`` looks orders up by id list; every call is a batch of up to
``batch_size`` ids. A batch refused as a caller error is split in halves until the bad ids are
isolated, so the good ids in it still load. ``alibaba.omni.order.query`` fetches one order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

import orjson

from etl import errors

log = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")

WDK_METHOD = "alibaba.wdk.order.get"
OMNI_METHOD = "alibaba.omni.order.query"


@dataclass(frozen=True)
class IdKind:
    name: str
    request_list: str  # the list in id_list_query_req
    order_field: str  # the order field that echoes the id
    numeric: bool


ID_KINDS: dict[str, IdKind] = {
    "biz": IdKind("biz", "biz_id_list", "biz_order_id", True),
    "tb_biz": IdKind("tb_biz", "tb_biz_id_list", "tb_biz_order_id", True),
    "out_order": IdKind("out_order", "out_order_id_list", "out_order_id", False),
}

# omni answers "not found" as a business failure; these msg_code fragments mean the order does
# not exist (an inference: the API page documents only the parameter error).
OMNI_NOT_FOUND_MARKERS = ("not-exist", "not-found", "notexist", "notfound", "no-order")


class Caller(Protocol):
    async def call_parsed(
        self, method: str, business: Mapping[str, Any], parse: Callable[[dict[str, Any]], T]
    ) -> T: ...


@dataclass
class WdkFetch(Generic[R]):
    """What one wdk lookup produced: orders (the raw dicts, or what the caller's reader made of
    them), ids the platform does not know, ids that failed."""

    orders: list[R] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    failed: dict[str, errors.TopError] = field(default_factory=dict)
    calls: int = 0


def validate_id(id_kind: str, value: str) -> str:
    """The canonical text of an id of ``id_kind``, or ValueError saying what is wrong."""
    kind = ID_KINDS.get(id_kind)
    if kind is None:
        raise ValueError(f"unknown id kind {id_kind!r}; expected one of {', '.join(ID_KINDS)}")
    text = value.strip()
    if not text:
        raise ValueError("empty id")
    if kind.numeric:
        if not text.isdigit() or not text.isascii():
            raise ValueError(f"{text!r} is not a positive integer id")
        number = int(text)
        if number <= 0 or number >= 2**63:
            raise ValueError(f"{text!r} is out of range for a 64-bit id")
        return str(number)
    if len(text) > 128 or any(ch in text for ch in ",\r\n\t"):
        raise ValueError(f"{text!r} is not a valid channel order id")
    return text


def wdk_request(
    id_kind: str, ids: Sequence[str], filters: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The business parameters of one alibaba.wdk.order.get call."""
    kind = ID_KINDS[id_kind]
    values: list[Any] = [int(i) for i in ids] if kind.numeric else list(ids)
    query: dict[str, Any] = {kind.request_list: values}
    for name in ("order_from", "shop_id", "store_id"):
        if filters and filters.get(name) not in (None, ""):
            query[name] = filters[name]
    return {"id_list_query_req": query}


def _malformed(what: str, payload: Mapping[str, Any], method: str) -> errors.MalformedResponse:
    """A MalformedResponse that shows the start of the answer and its request_id."""
    start = orjson.dumps(payload, default=str)[:200].decode("utf-8", errors="replace")
    rid = payload.get("request_id")
    return errors.MalformedResponse(
        f"{what}; answer starts {start!r}",
        method=method,
        request_id=str(rid) if rid else None,
    )


def wdk_orders(payload: Mapping[str, Any], notes: list[str] | None = None) -> list[dict[str, Any]]:
    """The orders in a wdk payload; raises BusinessError when ``return_code`` is not SUCCESS and
    MalformedResponse when there is no result at all: "not found" is concluded only from a
    successful result that lacks the order. ``notes``: warnings go there, not to the log (for
    a reader in another process; its caller logs them)."""
    result = payload.get("result")
    results = result if isinstance(result, list) else [result] if result is not None else []
    if not results:
        raise _malformed("wdk answer without a result", payload, WDK_METHOD)
    orders: list[dict[str, Any]] = []
    rid = payload.get("request_id")
    for res in results:
        if not isinstance(res, Mapping):
            raise _malformed("wdk result is not an object", payload, WDK_METHOD)
        code = str(res.get("return_code") or "")
        if code.upper() != "SUCCESS":
            if not code:
                raise _malformed("wdk result without a return_code", payload, WDK_METHOD)
            raise errors.BusinessError(
                f"return_code={code} return_msg={res.get('return_msg') or ''}".strip(),
                method=WDK_METHOD,
                sub_code=code,
                sub_msg=str(res.get("return_msg") or "") or None,
                request_id=str(rid) if rid else None,
            )
        batch = res.get("orders") or []
        if not isinstance(batch, list) or not all(isinstance(o, Mapping) for o in batch):
            raise _malformed("wdk orders is not a list of objects", payload, WDK_METHOD)
        _check_total(res, len(batch), rid, notes)
        orders.extend(dict(o) for o in batch)
    return orders


def _check_total(
    result: Mapping[str, Any], carried: int, rid: Any, notes: list[str] | None = None
) -> None:
    total = result.get("total_number")
    if total in (None, ""):
        return
    try:
        declared = int(total)
    except (TypeError, ValueError):
        declared = -1
    if declared == carried:
        return
    text = f"wdk answer says total_number={total} but carries {carried} orders"
    if notes is not None:
        notes.append(f"{text} (request_id {rid})" if rid else text)
    else:
        log.warning(text, extra={"request_id": rid, "method": WDK_METHOD})


def omni_model(payload: Mapping[str, Any]) -> dict[str, Any] | None:
    """The order of an omni payload, None when it does not exist; BusinessError otherwise."""
    result = payload.get("result")
    if isinstance(result, list):
        result = result[0] if result else None
    if not isinstance(result, Mapping):
        raise _malformed("omni answer without a result object", payload, OMNI_METHOD)
    if "success" not in result:
        raise _malformed("omni result without success", payload, OMNI_METHOD)
    success = result.get("success")
    ok = success is True or str(success).lower() == "true"
    rid = payload.get("request_id")
    if not ok:
        code = str(result.get("msg_code") or "")
        if any(m in code.lower() for m in OMNI_NOT_FOUND_MARKERS):
            return None
        raise errors.BusinessError(
            f"success=false msg_code={code} msg_info={result.get('msg_info') or ''}",
            method=OMNI_METHOD,
            sub_code=code or None,
            sub_msg=str(result.get("msg_info") or "") or None,
            request_id=str(rid) if rid else None,
        )
    model = result.get("model")
    if model is None or model == {}:
        return None
    if not isinstance(model, Mapping):
        raise _malformed("omni model is not an object", payload, OMNI_METHOD)
    return dict(model)


def chunks(ids: Sequence[str], size: int) -> list[list[str]]:
    return [list(ids[i : i + size]) for i in range(0, len(ids), size)]


def _dedupe(ids: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(ids))


async def wdk_order_get(
    client: Caller,
    ids: Sequence[str],
    id_kind: str = "biz",
    *,
    batch_size: int = 20,
    filters: Mapping[str, Any] | None = None,
) -> WdkFetch[dict[str, Any]]:
    """Fetch the orders of ``ids`` (of ``id_kind``) in concurrent calls of ``batch_size`` ids.

    Ids whose batch kept failing after retries are in ``failed`` with the error; a flow-control
    ban longer than the threshold and auth errors propagate (nothing is worth trying then).
    """
    field_name = ID_KINDS[id_kind].order_field

    async def read(business: Mapping[str, Any]) -> list[dict[str, Any]]:
        return await client.call_parsed(WDK_METHOD, business, wdk_orders)

    return await wdk_lookup(
        read,
        ids,
        id_kind,
        batch_size=batch_size,
        filters=filters,
        echo=lambda o: str(o.get(field_name)),
        identity=lambda o: str(o.get("biz_order_id")),
    )


async def wdk_lookup(
    read: Callable[[Mapping[str, Any]], Awaitable[list[R]]],
    ids: Sequence[str],
    id_kind: str,
    *,
    batch_size: int,
    filters: Mapping[str, Any] | None,
    echo: Callable[[R], str],
    identity: Callable[[R], str],
) -> WdkFetch[R]:
    """:func:`wdk_order_get` with the reading of one call's answer left to ``read(business)``
    (the orders of one call, in any form), ``echo(order)`` the requested id it answers and
    ``identity(order)`` its biz_order_id (an order answered twice is kept once)."""
    wanted = _dedupe(ids)
    out: WdkFetch[R] = WdkFetch()

    async def fetch(batch: list[str]) -> None:
        try:
            out.calls += 1
            orders = await read(wdk_request(id_kind, batch, filters))
        except (errors.CallerError, errors.BusinessError) as exc:
            if len(batch) == 1:
                out.failed[batch[0]] = exc
                return
            mid = len(batch) // 2
            log.info("batch refused; splitting to isolate bad ids", extra={"ids": len(batch)})
            await asyncio.gather(fetch(batch[:mid]), fetch(batch[mid:]))
            return
        except (errors.RateLimited, errors.CredentialsRejected, errors.ClockSkew):
            raise
        except errors.TopError as exc:
            for key in batch:
                out.failed[key] = exc
            return
        out.orders.extend(orders)

    await asyncio.gather(*(fetch(b) for b in chunks(wanted, batch_size)))
    out.orders = list({identity(o): o for o in out.orders}.values())
    seen = {echo(o) for o in out.orders}
    out.missing = [i for i in wanted if i not in seen and i not in out.failed]
    return out


async def omni_order_query(
    client: Caller, user_id: str, order_id: str, out_order_id: str
) -> dict[str, Any] | None:
    """The guide-sold order (user_id, order_id, out_order_id), or None if it does not exist."""
    return await client.call_parsed(
        OMNI_METHOD,
        {"user_id": user_id, "order_id": order_id, "out_order_id": out_order_id},
        omni_model,
    )


# ------------------------------------------------------------------- the message service (TMC)

TMC_CONSUME_METHOD = "taobao.tmc.messages.consume"
TMC_CONFIRM_METHOD = "taobao.tmc.messages.confirm"
TMC_CONFIRM_MAX = 200  # message ids per confirm call


def tmc_consume_request(group_name: str, quantity: int) -> dict[str, Any]:
    """The business parameters of one taobao.tmc.messages.consume call."""
    return {"group_name": group_name, "quantity": quantity}


def tmc_confirm_request(group_name: str, message_ids: Sequence[int]) -> dict[str, Any]:
    """The business parameters of one confirm call (ids comma-separated, at most 200)."""
    if len(message_ids) > TMC_CONFIRM_MAX:
        raise ValueError(f"at most {TMC_CONFIRM_MAX} message ids per confirm call")
    return {"group_name": group_name, "s_message_ids": ",".join(str(i) for i in message_ids)}


def tmc_messages(payload: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The messages of a consume payload (``[]`` when none: absent, null or ``{}``)."""
    messages = payload.get("messages")
    if messages is None or messages == {}:
        return []
    if not isinstance(messages, list) or not all(isinstance(m, Mapping) for m in messages):
        raise errors.MalformedResponse(
            "tmc messages is not a list of objects", method=TMC_CONSUME_METHOD
        )
    return [dict(m) for m in messages]


async def tmc_consume(client: Caller, group_name: str, quantity: int) -> list[dict[str, Any]]:
    """Take up to ``quantity`` messages of ``group_name`` (raw message objects)."""
    return await client.call_parsed(
        TMC_CONSUME_METHOD, tmc_consume_request(group_name, quantity), tmc_messages
    )


async def tmc_confirm(client: Caller, group_name: str, message_ids: Sequence[int]) -> int:
    """Acknowledge ``message_ids`` in calls of at most 200; returns the calls made."""
    batches = chunks([str(i) for i in message_ids], TMC_CONFIRM_MAX)
    for batch in batches:
        payload = await client.call_parsed(
            TMC_CONFIRM_METHOD, tmc_confirm_request(group_name, [int(i) for i in batch]), dict
        )
        ok = payload.get("is_success")
        if ok is not None and not (ok is True or str(ok).lower() == "true"):
            raise errors.PlatformTransient(
                "the platform did not accept the confirmation", method=TMC_CONFIRM_METHOD
            )
    return len(batches)
