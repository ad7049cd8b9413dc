"""Raw orders (either JSON shape) → rows for each table (pure).

A field that cannot be read becomes NULL and is counted in ``bad_fields``; it never fails the
order. Fields the schema does not know stay in ``raw`` and are listed in ``unknown_fields``. Only
an order without its key cannot be stored: :class:`InvalidOrder`.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any

import orjson

from etl.normalize import fields as f
from etl.top.envelope import unwrap_lists

Parser = Callable[[Any], Any]
JSON = "json"  # marker: a JSON-in-string field, stored as column (jsonb) + column_raw (text)
Spec = dict[str, Parser | str]


class InvalidOrder(ValueError):
    """An order that cannot be stored at all (its key is missing or unreadable)."""


WDK_ORDER: Spec = {
    "biz_order_id": f.to_int,
    "tb_biz_order_id": f.to_int,
    "out_order_id": f.to_text,
    "store_id": f.to_text,
    "shop_id": f.to_text,
    "out_shop_id": f.to_text,
    "merchant_code": f.to_text,
    "order_from": f.to_int32,
    "order_client": f.to_text,
    "trd_type": f.to_int16,
    "order_status": f.to_text,
    "pay_time": f.to_time,
    "package_time": f.to_time,
    "original_amt": f.to_int,
    "discount_amt": f.to_int,
    "member_discount_amt": f.to_int,
    "post_fee": f.to_int,
    "pay_amt": f.to_int,
    "member_card_num": f.to_text,
    "member_point": f.to_decimal,
    "operator_id": f.to_text,
    "operator_name": f.to_text,
    "gift_coupon": f.to_text,
    "duty_code": f.to_text,
    "open_uid": f.to_text,
    "trade_attributes": JSON,
}
WDK_PAY_CHANNEL: Spec = {
    "order_channel": f.to_text,
    "pay_amount": f.to_int,
    "pay_type": f.to_int16,
    "pos_no": f.to_text,
    "store_id": f.to_text,
    "trd_type": f.to_int16,
    "actual_pay_amount": f.to_int,
    "adjust_amount": f.to_int,
    "promotion_card_info": f.to_text,
    "pay_attributes": JSON,
    "pmt_alipay_promotion_amt": f.to_int,
    "pmt_alipay_reduce_amt": f.to_int,
    "pmt_koubei_coupon_amt": f.to_int,
    "koubei_coupon_info": JSON,
}
WDK_SUB_ORDER: Spec = {
    "biz_order_id": f.to_int,
    "parent_id": f.to_int,
    "tb_biz_order_id": f.to_int,
    "out_order_id": f.to_text,
    "store_id": f.to_text,
    "trd_type": f.to_int16,
    "order_type": f.to_text,
    "order_status": f.to_text,
    "item_code": f.to_int,
    "sku_code": f.to_text,
    "out_sku_code": f.to_text,
    "price": f.to_int,
    "quantity": f.to_decimal,
    "sell_unit": f.to_text,
    "ns_quantity": f.to_decimal,
    "stock_unit": f.to_text,
    "sale_unit": f.to_text,
    "pick_amount_stock": f.to_decimal,
    "buy_amount_stock": f.to_decimal,
    "original_amt": f.to_int,
    "promotion_discount_amt": f.to_int,
    "member_discount_amt": f.to_int,
    "share_discount_amt": f.to_int,
    "txd_pmt_amt": f.to_int,
    "pick_amt": f.to_int,
    "member_point": f.to_decimal,
    "promotion_info": JSON,
    "status_change_time": JSON,
    "trade_sub_attributes": JSON,
}
OMNI_ORDER: Spec = {
    "order_id": f.to_text,
    "alipay_order_id": f.to_text,
    "out_order_id": f.to_text,
    "o2o_guide_id": f.to_int,
    "o2o_guide_name": f.to_text,
    "o2o_shop_id": f.to_text,
    "o2o_shop_name": f.to_text,
    "item_id": f.to_int,
    "item_title": f.to_text,
    "sku_id": f.to_text,
    "sku_properties_name": f.to_text,
    "contract_price": f.to_int,
    "total_fee": f.to_int,
    "voucher_price": f.to_int,
    "pay_status": f.to_int32,
    "can_close": f.to_bool,
}
OMNI_PROMOTION: Spec = {
    "promotion_id": f.to_int,
    "promotion_amount": f.to_int,
    "promotion_type": f.to_int32,
    "promotion_order_id": f.to_int,
    "promotion_buy_amount": f.to_int,
}
OMNI_SUBPAY: Spec = {
    "subpay_order_id": f.to_int,
    "step_no": f.to_int32,
    "pay_status": f.to_int32,
    "pay_type": f.to_int32,
    "total_fee": f.to_int,
    "disburse_status": f.to_text,
}
OMNI_SERIAL: Spec = {
    "pay_serial_no": f.to_text,
    "step_no": f.to_int32,
    "batch_no": f.to_int,
    "paid_money": f.to_int,
    "pay_time": f.to_time,
    "sync_time": f.to_time,
    "pay_type": f.to_int32,
    "pay_status": f.to_int32,
}
# Fields each item may carry: its columns, its lists, and known fields that are not columns.
KNOWN = {
    "wdk_order": frozenset({*WDK_ORDER, "pay_channels", "sub_orders"}),
    # a pay channel's biz_order_id is its order's: the key already, not a column of its own
    "wdk_pay_channel": frozenset({*WDK_PAY_CHANNEL, "biz_order_id"}),
    "wdk_sub_order": frozenset(WDK_SUB_ORDER),
    "omni_order": frozenset(
        {*OMNI_ORDER, "promotion_info", "subpay_order_list", "pay_order_serial_infos"}
    ),
    "omni_promotion": frozenset(OMNI_PROMOTION),
    "omni_subpay": frozenset(OMNI_SUBPAY),
    "omni_serial": frozenset(OMNI_SERIAL),
}


@dataclass
class NormalizedOrder:
    """One order as rows: the parent row and each child table's rows, plus what was odd."""

    api: str
    key: Any
    parent: dict[str, Any]
    children: dict[str, list[dict[str, Any]]]
    bad_fields: list[str] = field(default_factory=list)
    unknown_fields: list[str] = field(default_factory=list)

    @property
    def fetched_at(self) -> datetime:
        value: datetime = self.parent["fetched_at"]
        return value


def _canonical(value: Any) -> Any:
    """Drop what both shapes may spell differently: None and empty lists / objects.

    Returns ``value`` itself when there is nothing to drop (most orders), else a cleaned copy.
    """
    if type(value) is dict:
        out: dict[str, Any] | None = None
        for key, item in value.items():
            kind = type(item)
            if kind is dict or kind is list:
                cleaned = _canonical(item)
                keep = bool(cleaned)
            else:
                cleaned, keep = item, item is not None
            if out is None and (not keep or cleaned is not item):
                out = {k: value[k] for k in list(value)[: list(value).index(key)]}
            if out is not None and keep:
                out[key] = cleaned
        return value if out is None else out
    if type(value) is list:
        cleaned_list = [_canonical(v) if type(v) in (dict, list) else v for v in value]
        changed = any(a is not b for a, b in zip(cleaned_list, value, strict=True))
        return cleaned_list if changed else value
    return value


def content_hash(order: Mapping[str, Any]) -> str:
    """sha256 of the order's canonical JSON: stable across key order and both JSON shapes."""
    return _hash_simplified(unwrap_lists(dict(order)))


@dataclass(frozen=True, slots=True)
class Digest:
    """An order before normalization: its key, canonical content hash and raw JSON text."""

    key: Any
    payload_hash: str
    raw: bytes  # UTF-8 JSON text


def order_key(api: str, raw: Mapping[str, Any]) -> Any:
    """The order's key as the tables store it (wdk: bigint, omni: text); InvalidOrder if none."""
    if api == "wdk":
        try:
            key = f.to_int(raw.get("biz_order_id"))
        except f.BadField:
            key = None
        if key is None:
            raise InvalidOrder(
                f"order without a readable biz_order_id: {raw.get('biz_order_id')!r}"
            )
        return key
    oid = f.to_text(raw.get("order_id")) if raw.get("order_id") is not None else None
    if not oid:
        raise InvalidOrder(f"omni order without an order_id: {raw.get('order_id')!r}")
    return oid


def digest(
    api: str, order: Mapping[str, Any], *, simplified: bool = False
) -> tuple[dict[str, Any], Digest]:
    """The simplified order and its :class:`Digest`, without normalizing anything: enough to
    tell an unchanged order (same hash as the stored one) before paying for normalization.
    ``simplified``: the caller already unwrapped the order's lists (not checked again)."""
    raw: dict[str, Any] = order if simplified and type(order) is dict else unwrap_lists(dict(order))
    text, content = raw_and_hash(raw)
    return raw, Digest(order_key(api, raw), content, text)


# An object member whose value is null, [] or {}: what _canonical drops, matched in compact JSON
# text (a '"' inside a string is always escaped, so '{"' / ',"' only ever start a member).
_MEMBER = rb'"(?:[^"\\]|\\.)*":(?:null|\[\]|\{\})'
_EMPTY_LATER_MEMBER = re.compile(rb"," + _MEMBER + rb"(?=[,}])")
_EMPTY_FIRST_MEMBER = re.compile(rb"(?<=\{)" + _MEMBER + rb"(?:,|(?=\}))")


def canonical_text(blob: bytes) -> bytes:
    """Compact, key-sorted JSON text → the text of its canonical form (see :func:`_canonical`):
    the same bytes as dumping the canonical value, without walking the value in Python."""
    while b":null" in blob or b":[]" in blob or b":{}" in blob:  # else nothing to drop
        out = _EMPTY_FIRST_MEMBER.sub(b"", _EMPTY_LATER_MEMBER.sub(b"", blob))
        if out == blob:
            break
        blob = out
    return blob


def _hash_simplified(raw: dict[str, Any]) -> str:
    return raw_and_hash(raw)[1]


def raw_and_hash(raw: dict[str, Any]) -> tuple[bytes, str]:
    """The simplified order's JSON text (UTF-8) as stored (keys sorted, like jsonb would) and
    its content hash, from one serialisation."""
    try:
        blob = orjson.dumps(raw, option=orjson.OPT_SORT_KEYS)
    except TypeError:  # an integer beyond 64 bits: the slow, structural way
        return f.dumps(raw).encode(), _hash_structural(raw)
    content = hashlib.sha256(canonical_text(blob)).hexdigest()
    if b"\\u0000" in blob:  # jsonb refuses NUL; the hash is of the text as received
        blob = blob.replace(b"\\u0000", b"")
    return blob, content


def _hash_structural(raw: dict[str, Any]) -> str:
    canonical = _canonical(raw)
    try:
        blob = orjson.dumps(canonical, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        blob = f.dumps(_sorted(canonical)).encode()
    return hashlib.sha256(blob).hexdigest()


def _sorted(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _sorted(value[k]) for k in sorted(value)}
    if isinstance(value, list):
        return [_sorted(v) for v in value]
    return value


def _slow(parser: Parser, value: Any, where: str, name: str, bad: list[str]) -> Any:
    try:
        return parser(value)
    except f.BadField:
        bad.append(f"{where}{name}")
        return None


def _decimal(value: Any, where: str, name: str, bad: list[str]) -> Decimal | None:
    if type(value) is int:
        return Decimal(value)
    if type(value) is str:  # the common case: a plain decimal string
        try:
            number = Decimal(value)
        except InvalidOperation:
            number = None
        if number is not None and number.is_finite():
            return number
    return _slow(f.to_decimal, value, where, name, bad)  # type: ignore[no-any-return]


def _json(value: Any, where: str, name: str, bad: list[str]) -> tuple[str | None, str | None]:
    if type(value) is str:
        if value == "":
            return None, value
        # the common case: strict JSON text, which jsonb takes as it is
        if value[0] in "{[" and "\x00" not in value and "\\u0000" not in value:
            try:
                orjson.loads(value)
            except orjson.JSONDecodeError:
                pass
            else:
                return value, value
    loose = f.loose_json(value)
    if not loose.ok:
        bad.append(f"{where}{name}")
    return loose.text, loose.raw


# Inlined fast paths per parser: the value as it is when the guard holds, else the parser.
_FAST_GUARD: dict[Any, str] = {
    f.to_int: "v is None or (type(v) is int and -9223372036854775808 <= v < 9223372036854775808)",
    f.to_int32: "v is None or (type(v) is int and -2147483648 <= v < 2147483648)",
    f.to_int16: "v is None or (type(v) is int and -32768 <= v < 32768)",
    f.to_text: "v is None or (type(v) is str and '\\x00' not in v)",
}
_BLANK_NONE = (f.to_time,)  # None and "" are NULL without calling the parser


RowFn = Callable[[Mapping[str, Any], str, list[str]], dict[str, Any]]


def _compile(spec: Spec, label: str) -> RowFn:
    """Specialise ``spec`` once: one function reading every field with the parser's fast path
    inlined, building the row dict in a single literal (no per-field dispatch, no copies)."""
    lines = ["def apply(item, where, bad):", "    g = item.get"]
    names: list[tuple[str, str]] = []
    env: dict[str, Any] = {"_slow": _slow, "_json": _json, "_decimal": _decimal}
    for i, (name, parser) in enumerate(spec.items()):
        var = f"v{i}"
        lines.append(f"    v = g({name!r})")
        if parser is JSON:
            call = f"_json(v, where, {name!r}, bad)"
            lines.append(f"    {var}, {var}r = (None, None) if v is None else {call}")
            names += [(name, var), (f"{name}_raw", f"{var}r")]
            continue
        env[f"p{i}"] = parser
        slow = f"_slow(p{i}, v, where, {name!r}, bad)"
        if parser in _FAST_GUARD:
            lines.append(f"    {var} = v if {_FAST_GUARD[parser]} else {slow}")
        elif parser is f.to_decimal:
            call = f"_decimal(v, where, {name!r}, bad)"
            lines.append(f"    {var} = None if v is None or v == '' else {call}")
        elif parser in _BLANK_NONE:
            lines.append(f"    {var} = None if v is None or v == '' else {slow}")
        else:
            lines.append(f"    {var} = {slow}")
        names.append((name, var))
    body = ", ".join(f"{n!r}: {v}" for n, v in names)
    lines.append(f"    return {{{body}}}")
    code = compile("\n".join(lines), f"<normalizer {label}>", "exec")
    exec(code, env)  # noqa: S102 - our own generated code, built from the specs above
    fn: RowFn = env["apply"]
    return fn


_APPLY = {
    id(spec): _compile(spec, label)
    for spec, label in (
        (WDK_ORDER, "wdk_order"),
        (WDK_PAY_CHANNEL, "wdk_pay_channel"),
        (WDK_SUB_ORDER, "wdk_sub_order"),
        (OMNI_ORDER, "omni_order"),
        (OMNI_PROMOTION, "omni_promotion"),
        (OMNI_SUBPAY, "omni_subpay"),
        (OMNI_SERIAL, "omni_serial"),
    )
}


def _apply(spec: Spec, item: Mapping[str, Any], where: str, bad: list[str]) -> dict[str, Any]:
    return _APPLY[id(spec)](item, where, bad)


def _unknown(item: Mapping[str, Any], known: frozenset[str], where: str) -> list[str]:
    if known.issuperset(item):  # the common case, without building a set
        return []
    extra = item.keys() - known
    return [f"{where}{k}" for k in extra] if extra else []


def _items(order: Mapping[str, Any], name: str, bad: list[str]) -> list[Mapping[str, Any]]:
    value = order.get(name)
    if value is None:
        return []
    if not isinstance(value, list):
        bad.append(name)
        return []
    return [v for v in value if isinstance(v, Mapping)]


def _missing_key(bad: list[str], where: str) -> None:
    if where not in bad:
        bad.append(where)


def _bookkeeping(
    raw: dict[str, Any],
    fetched_at: datetime,
    unknown: list[str],
    known: tuple[bytes, str] | None,
) -> dict[str, Any]:
    text, digest = known if known is not None else raw_and_hash(raw)
    return {
        "raw": text,
        "payload_hash": digest,
        "unknown_fields": sorted(set(unknown)) or None,
        "fetched_at": fetched_at,
    }


def normalize_wdk(
    order: Mapping[str, Any],
    fetched_at: datetime,
    *,
    known: tuple[bytes, str] | None = None,
) -> NormalizedOrder:
    """An alibaba.wdk.order.get order → wdk_orders / wdk_pay_channels / wdk_sub_orders rows.

    ``known`` is ``(raw JSON text, payload hash)`` when the caller has them already (an order
    digested before, see :func:`digest`): ``order`` is then taken as the simplified shape.
    """
    raw: dict[str, Any] = (
        order if known is not None and type(order) is dict else unwrap_lists(dict(order))
    )
    bad: list[str] = []
    parent = _apply(WDK_ORDER, raw, "", bad)
    key = parent["biz_order_id"]
    if key is None:
        raise InvalidOrder(f"order without a readable biz_order_id: {raw.get('biz_order_id')!r}")
    unknown = _unknown(raw, KNOWN["wdk_order"], "")
    channels = []
    for seq, item in enumerate(_items(raw, "pay_channels", bad)):
        where = f"pay_channels[{seq}]."
        row = _apply(WDK_PAY_CHANNEL, item, where, bad)
        row.update(biz_order_id=key, seq=seq)
        channels.append(row)
        unknown += _unknown(item, KNOWN["wdk_pay_channel"], "pay_channels.")
    subs = []
    for seq, item in enumerate(_items(raw, "sub_orders", bad)):
        where = f"sub_orders[{seq}]."
        row = _apply(WDK_SUB_ORDER, item, where, bad)
        unknown += _unknown(item, KNOWN["wdk_sub_order"], "sub_orders.")
        if row["biz_order_id"] is None:  # cannot be stored without its key; kept in raw
            _missing_key(bad, f"{where}biz_order_id")
            continue
        row.update(order_biz_order_id=key, seq=seq)
        subs.append(row)
    parent.update(_bookkeeping(raw, fetched_at, unknown, known))
    return NormalizedOrder(
        "wdk",
        key,
        parent,
        {"wdk_pay_channels": channels, "wdk_sub_orders": subs},
        bad,
        sorted(set(unknown)),
    )


def normalize_omni(
    model: Mapping[str, Any],
    fetched_at: datetime,
    user_id: str | None = None,
    *,
    known: tuple[bytes, str] | None = None,
) -> NormalizedOrder:
    """An alibaba.omni.order.query model → omni_orders / omni_subpay_orders / omni_pay_serials."""
    raw: dict[str, Any] = (
        model if known is not None and type(model) is dict else unwrap_lists(dict(model))
    )
    bad: list[str] = []
    parent = _apply(OMNI_ORDER, raw, "", bad)
    key = parent["order_id"]
    if not key:
        raise InvalidOrder(f"omni order without an order_id: {raw.get('order_id')!r}")
    parent["user_id"] = user_id
    promotion = raw.get("promotion_info")
    if promotion is not None and not isinstance(promotion, Mapping):
        bad.append("promotion_info")
        promotion = None
    parent.update(_apply(OMNI_PROMOTION, promotion or {}, "promotion_info.", bad))
    unknown = _unknown(raw, KNOWN["omni_order"], "")
    if promotion:
        unknown += _unknown(promotion, KNOWN["omni_promotion"], "promotion_info.")
    subpays = []
    for seq, item in enumerate(_items(raw, "subpay_order_list", bad)):
        row = _apply(OMNI_SUBPAY, item, f"subpay_order_list[{seq}].", bad)
        unknown += _unknown(item, KNOWN["omni_subpay"], "subpay_order_list.")
        if row["subpay_order_id"] is None:
            _missing_key(bad, f"subpay_order_list[{seq}].subpay_order_id")
            continue
        row.update(order_id=key, seq=seq)
        subpays.append(row)
    serials = []
    for seq, item in enumerate(_items(raw, "pay_order_serial_infos", bad)):
        row = _apply(OMNI_SERIAL, item, f"pay_order_serial_infos[{seq}].", bad)
        unknown += _unknown(item, KNOWN["omni_serial"], "pay_order_serial_infos.")
        row.update(order_id=key, seq=seq)
        serials.append(row)
    parent.update(_bookkeeping(raw, fetched_at, unknown, known))
    return NormalizedOrder(
        "omni",
        key,
        parent,
        {"omni_subpay_orders": subpays, "omni_pay_serials": serials},
        bad,
        sorted(set(unknown)),
    )
