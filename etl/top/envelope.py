"""Gateway answers (pure): body → payload, or a classified error. Both JSON shapes.

The default shape wraps the payload in ``<method_with_underscores>_response`` and every array in
an object keyed by its item type (``"orders": {"order": [...]}``; an empty list may be ``{}``,
``null`` or absent). The simplified shape has neither. :func:`unwrap_lists` turns the default
shape into the simplified one, so everything downstream sees one shape.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeVar

import orjson

from etl import chinatime, errors

T = TypeVar("T")

# List fields of both APIs and the item key the default shape wraps them in.
LIST_FIELDS: dict[str, str] = {
    "orders": "order",
    "pay_channels": "pay_channel",
    "sub_orders": "sub_order",
    "subpay_order_list": "sub_pay_order_detail",
    "pay_order_serial_infos": "pay_order_serial_info",
    "messages": "tmc_message",  # taobao.tmc.messages.consume
}

# Both spellings: "This ban will last for 12 more seconds" and
# "accesscontrol.limited-by-app-api-access-count, will last 2 more seconds" (TOP_PROTOCOL §4).
BAN_SECONDS = re.compile(r"will last (?:for )?(\d+(?:\.\d+)?) more seconds", re.I)
# Daily quotas reset at midnight China time; such a ban often says no wait at all.
DAILY_QUOTA_SUB_CODES = frozenset(
    {"accesscontrol.limited-by-app-access-count", "isv.access-limited-by-app-access-count"}
)

TRANSIENT_CODES = frozenset({10, 44})
FLOW_CODES = frozenset({7, 8})
AUTH_CODES = frozenset({26, 27})
CALLER_CODES = frozenset({9, 11, 12, 13, *range(21, 26), 28, 29, 30, 32, 33, 34, *range(40, 44)})
CALLER_CODES = CALLER_CODES | {45, 46, 47}
TRANSIENT_SUB_CODES = frozenset(
    {
        "isp.top-remote-connection-timeout",
        "isp.top-remote-connection-error",
        "isp.top-remote-service-unavailable",
        "isp.top-remote-unknown-error",
        "isp.remote-service-timeout",
        "isp.service-error",
        "isp.unknown-error",
        "isp.call-limited",
        "isv.trade-service-rejection",
    }
)
AUTH_SUB_MARKERS = ("invalid-sessionkey", "session-expired", "session-not-exist", "missing-session")
SIGNATURE_CODES = frozenset({25})
SIGNATURE_SUB_MARKERS = ("invalid-signature", "invalid-sign-method", "sign-error")
APP_KEY_CODES = frozenset({28, 29})
APP_KEY_SUB_MARKERS = ("invalid-app-key", "appkey-not-exist", "app-key-not-exist", "app-disabled")
PERMISSION_CODES = frozenset({11, 12})
PERMISSION_SUB_MARKERS = ("permission",)


def decode(body: bytes) -> Any:
    """JSON → Python, exact integers, tolerating raw control characters inside strings."""
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        pass
    try:
        return json.loads(body.decode("utf-8", errors="strict"), strict=False)
    except (UnicodeDecodeError, ValueError) as exc:
        snippet = body[:120].decode("utf-8", errors="replace")
        raise errors.MalformedResponse(
            f"gateway body is not JSON ({exc.__class__.__name__}: {exc}); "
            f"{len(body)} bytes starting {snippet!r}"
        ) from exc


LIST_KEYS = frozenset(LIST_FIELDS)


# A list field in the default shape's wrapping ("orders": {"order": [...]}, or null / {} when
# empty). In JSON text a '"' inside a string is escaped, so this only matches real members.
_WRAPPED = re.compile(rb'"(?:' + b"|".join(k.encode() for k in LIST_FIELDS) + rb')"\s*:\s*[{n]')


def has_wrapping(body: bytes) -> bool:
    """Whether JSON text ``body`` has any list field in the default shape's wrapping. False:
    the parsed document is in the simplified shape already, and need not be walked (one scan
    of the text costs ~1/10 of :func:`is_simplified`'s walk over the parsed orders)."""
    return _WRAPPED.search(body) is not None


def is_simplified(value: dict[str, Any]) -> bool:
    """Whether ``value`` is already in the simplified shape (every list field a list of
    simplified objects, nothing wrapped); checked without copying anything."""
    for key in LIST_KEYS & value.keys():
        if type(value[key]) is not list:
            return False
    for item in value.values():
        kind = type(item)
        if kind is dict:
            if not is_simplified(item):
                return False
        elif kind is list:
            for child in item:
                if type(child) is dict and not is_simplified(child):
                    return False
    return True


def unwrap_lists(value: Any) -> Any:
    """Default shape → simplified shape, recursively (lists unwrapped; ``{}``/null → ``[]``).

    A value already in the simplified shape is returned as it is (not copied).
    """
    if isinstance(value, dict) and is_simplified(value):
        return value
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            if key in LIST_FIELDS:
                out[key] = [
                    unwrap_lists(v) if isinstance(v, dict | list) else v
                    for v in _as_list(item, LIST_FIELDS[key])
                ]
            elif isinstance(item, dict | list):
                out[key] = unwrap_lists(item)
            else:
                out[key] = item
        return out
    if isinstance(value, list):
        return [unwrap_lists(v) if isinstance(v, dict | list) else v for v in value]
    return value


def _as_list(item: Any, item_key: str) -> list[Any]:
    if item is None:
        return []
    if isinstance(item, list):
        return item
    if isinstance(item, dict):
        if not item:
            return []
        if item_key in item:
            inner = item[item_key]
            if inner is None:
                return []
            return inner if isinstance(inner, list) else [inner]
        return [item]  # a single object where a list was expected
    raise errors.MalformedResponse(f"expected a list for {item_key}s, got {type(item).__name__}")


def ban_seconds(text: str | None) -> float | None:
    """``This ban will last for 12 more seconds`` / ``..., will last 12 more seconds`` → 12.0."""
    if not text:
        return None
    m = BAN_SECONDS.search(text)
    return float(m.group(1)) if m else None


def classify(error: Mapping[str, Any], method: str | None = None) -> errors.TopError:
    """An ``error_response`` object → the exception that says what to do about it (§4)."""
    code = _int_or_none(error.get("code"))
    sub_code = str(error.get("sub_code") or "") or None
    msg = str(error.get("msg") or "") or "platform error"
    sub_msg = str(error.get("sub_msg") or "") or None
    kw: dict[str, Any] = {
        "code": code,
        "sub_code": sub_code,
        "sub_msg": sub_msg,
        "request_id": str(error.get("request_id") or "") or None,
        "method": method,
    }
    sc = (sub_code or "").lower()
    if code in FLOW_CODES or sc.startswith("accesscontrol.") or sc.startswith("isv.access-limited"):
        seconds = ban_seconds(sub_msg) or ban_seconds(msg)
        if seconds is None:
            daily = sc in DAILY_QUOTA_SUB_CODES
            seconds = chinatime.seconds_to_midnight() if daily else 1.0
        return errors.RateLimited(msg, retry_after=seconds, **kw)
    if code == 31 or sc == "isv.timestamp-limit-error":
        return errors.ClockSkew(msg, **kw)
    credentials = _credentials_error(code, sc)
    if credentials is not None:
        return credentials(msg, **kw)
    if code in TRANSIENT_CODES or sc in TRANSIENT_SUB_CODES:
        return errors.PlatformTransient(msg, **kw)
    if code in CALLER_CODES or sc.startswith("isv.") or sc == "isp.top-mapping-parse-error":
        return errors.CallerError(msg, **kw)
    if sc.startswith("isp.") or code in (15, 50):
        # Remote service errors not listed as permanent: the platform's side, worth a retry.
        return errors.PlatformTransient(msg, **kw)
    return errors.CallerError(msg, **kw)


def _credentials_error(code: int | None, sc: str) -> type[errors.CredentialsRejected] | None:
    """The configuration error a code / sub_code names (signature, app key, session,
    permission), or None: these never depend on the ids of the call."""
    if code in AUTH_CODES or any(m in sc for m in AUTH_SUB_MARKERS):
        return errors.AuthError
    if code in SIGNATURE_CODES or any(m in sc for m in SIGNATURE_SUB_MARKERS):
        return errors.SignatureError
    if code in APP_KEY_CODES or any(m in sc for m in APP_KEY_SUB_MARKERS):
        return errors.AppKeyError
    if code in PERMISSION_CODES or any(m in sc for m in PERMISSION_SUB_MARKERS):
        return errors.PermissionDenied
    return None


def _int_or_none(value: Any) -> int | None:
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def payload(body: bytes, method: str) -> dict[str, Any]:
    """The payload of a successful answer (simplified shape, ``request_id`` included).

    Raises the classified :class:`errors.TopError` for an ``error_response`` and
    :class:`errors.MalformedResponse` for a body that is not the documented JSON.
    """
    doc = decode(body)
    if not isinstance(doc, dict):
        raise errors.MalformedResponse(
            f"gateway answered a JSON {type(doc).__name__}, not an object"
        )
    if "error_response" in doc:
        err = doc["error_response"]
        raise classify(err if isinstance(err, dict) else {"msg": str(err)}, method)
    wrapper = response_key(method)
    inner = doc.get(wrapper, doc)
    if not isinstance(inner, dict):
        raise errors.MalformedResponse(f"{wrapper} is a {type(inner).__name__}, not an object")
    result: dict[str, Any] = unwrap_lists(inner) if has_wrapping(body) else inner
    return result


def parsed(body: bytes, method: str, parse: Callable[[dict[str, Any]], T]) -> T:
    """``parse`` applied to the payload of ``body`` (see :func:`payload`); a
    :class:`errors.MalformedResponse` it raises carries the answer's request_id."""
    found = payload(body, method)
    try:
        return parse(found)
    except errors.MalformedResponse as exc:
        exc.request_id = exc.request_id or request_id(found)
        raise


def response_key(method: str) -> str:
    """The default shape's wrapper: ``alibaba.wdk.order.get`` → ``alibaba_wdk_order_get_response``;
    the platform drops a leading ``taobao.`` (``tmc_messages_consume_response``)."""
    return method.removeprefix("taobao.").replace(".", "_") + "_response"


def request_id(payload_: Mapping[str, Any]) -> str | None:
    rid = payload_.get("request_id")
    return str(rid) if rid else None
