"""Lenient field parsers (pure). Each returns the parsed value or raises :class:`BadField`.

The platform's own parsers are lenient (numeric strings for numbers, ``"true"`` for booleans, any
scalar for a string), so these are at least as lenient. A value that still cannot be read never
fails its order: the caller stores NULL, keeps the raw order, and counts the field.
"""

from __future__ import annotations

import json
import re
from datetime import datetime
from decimal import Decimal, InvalidOperation
from typing import Any, NamedTuple

import orjson

from etl import chinatime

INT16 = 2**15
INT32 = 2**31
INT64 = 2**63

_INT_TEXT = re.compile(r"^[+-]?\d+$")
_TRAILING_COMMA = re.compile(r",\s*([}\]])")
_TYPOGRAPHIC = "“”„‟″‘’‚‛"
_TIME_FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M", "%Y-%m-%d")


class BadField(ValueError):
    """A field value that cannot be read as its column's type."""


def _blank(value: Any) -> bool:
    return value is None or (isinstance(value, str) and value.strip() == "")


def to_int(value: Any, bound: int = INT64) -> int | None:
    """Integer from a number or a numeric string, exact for 19 digits; within ±bound."""
    if type(value) is int and -bound <= value < bound:  # the common case, fast
        return value
    if _blank(value):
        return None
    if isinstance(value, bool):
        raise BadField(f"boolean {value!r} where a number was expected")
    if isinstance(value, int):
        number = value
    elif isinstance(value, float):
        if not value.is_integer():
            raise BadField(f"{value!r} is not a whole number")
        number = int(value)
    elif isinstance(value, str) and _INT_TEXT.match(value.strip()):
        number = int(value.strip())
    elif isinstance(value, str):
        try:
            dec = Decimal(value.strip())
        except InvalidOperation:
            raise BadField(f"{value!r} is not a number") from None
        if dec != dec.to_integral_value():
            raise BadField(f"{value!r} is not a whole number")
        number = int(dec)
    else:
        raise BadField(f"{type(value).__name__} where a number was expected")
    if not -bound <= number < bound:
        raise BadField(f"{number} is out of range")
    return number


def to_int32(value: Any) -> int | None:
    return to_int(value, INT32)


def to_int16(value: Any) -> int | None:
    return to_int(value, INT16)


def to_decimal(value: Any) -> Decimal | None:
    """``Decimal`` from a decimal string (``"1.1"``) or a number."""
    if _blank(value):
        return None
    if isinstance(value, bool):
        raise BadField(f"boolean {value!r} where a decimal was expected")
    try:
        dec = Decimal(str(value).strip())
    except InvalidOperation:
        raise BadField(f"{value!r} is not a decimal") from None
    if not dec.is_finite():
        raise BadField(f"{value!r} is not a finite decimal")
    return dec


def to_time(value: Any) -> datetime | None:
    """China-time text ``yyyy-MM-dd HH:mm:ss`` (or epoch milliseconds) → aware datetime."""
    if _blank(value):
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        seconds = value / 1000 if value > 10**11 else value
        try:
            return datetime.fromtimestamp(seconds, chinatime.CHINA)
        except (OverflowError, OSError, ValueError):
            raise BadField(f"{value!r} is not a time") from None
    if not isinstance(value, str):
        raise BadField(f"{type(value).__name__} where a time was expected")
    text = value.strip()
    if len(text) == 19 and text[4] == "-" and text[10] == " ":
        try:  # the documented format, parsed without strptime's overhead
            return datetime(
                int(text[0:4]),
                int(text[5:7]),
                int(text[8:10]),
                int(text[11:13]),
                int(text[14:16]),
                int(text[17:19]),
                tzinfo=chinatime.CHINA,
            )
        except ValueError:
            pass
    for fmt in _TIME_FORMATS:
        try:
            return datetime.strptime(text, fmt).replace(tzinfo=chinatime.CHINA)
        except ValueError:
            continue
    raise BadField(f"{value!r} is not a yyyy-MM-dd HH:mm:ss time")


def to_bool(value: Any) -> bool | None:
    """Booleans from ``true``/``"true"``/``1``/``"1"`` (and their opposites)."""
    if _blank(value):
        return None
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("true", "1", "t", "yes", "y"):
        return True
    if text in ("false", "0", "f", "no", "n"):
        return False
    raise BadField(f"{value!r} is not a boolean")


def to_text(value: Any) -> str | None:
    """Any scalar as text; objects as compact JSON. NUL characters (which PostgreSQL cannot store)
    are dropped."""
    if type(value) is str and "\x00" not in value:  # the common case, fast
        return value
    if value is None:
        return None
    if isinstance(value, str):
        text = value
    elif isinstance(value, bool):
        text = "true" if value else "false"
    elif isinstance(value, int | float | Decimal):
        text = str(value)
    else:
        text = dumps(value)
    return text.replace("\x00", "") if "\x00" in text else text


def dumps(value: Any) -> str:
    """Compact JSON text, exact for big integers, with no NUL escapes (jsonb refuses them)."""
    try:
        text = orjson.dumps(value).decode()
    except TypeError:  # an integer beyond 64 bits, or a Decimal
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), default=str)
    return text.replace("\\u0000", "") if "\\u0000" in text else text


class Loose(NamedTuple):
    """A JSON-in-string field: the parsed value, the text as received, whether it could be
    parsed, and JSON text of the value that PostgreSQL's jsonb accepts (None when no value)."""

    value: Any
    raw: str | None
    ok: bool
    text: str | None


def loose_json(value: Any) -> Loose:
    """Parse JSON-inside-a-string leniently.

    Repairs what the platform's own examples show: typographic quotes around the text, doubled
    escaping (``{\\"a\\":1}``), trailing commas, and JSON encoded twice. An empty string gives
    no value (and is fine); text that still cannot be parsed gives no value and ``ok=False``.
    """
    if value is None:
        return Loose(None, None, True, None)
    if not isinstance(value, str):  # already structured
        text = dumps(value)
        return Loose(value, text, True, text)
    raw = value.replace("\x00", "") if "\x00" in value else value
    stripped = raw.strip()
    if not stripped:
        return Loose(None, raw, True, None)
    try:  # the common case: valid, strict JSON, which jsonb takes as it is
        parsed = orjson.loads(stripped)
        if not isinstance(parsed, str) and "\\u0000" not in stripped:
            return Loose(parsed, raw, True, stripped if parsed is not None else None)
    except orjson.JSONDecodeError:
        pass
    for candidate in _repairs(stripped):
        try:
            parsed = json.loads(candidate, strict=False)
        except ValueError:
            continue
        if isinstance(parsed, str) and parsed.strip()[:1] in ("{", "["):
            inner = loose_json(parsed)  # JSON encoded twice
            if inner.ok and inner.value is not None:
                return Loose(inner.value, raw, True, inner.text)
        if parsed is None:
            return Loose(None, raw, True, None)
        return Loose(parsed, raw, True, dumps(parsed))
    return Loose(None, raw, False, None)


def _repairs(text: str) -> list[str]:
    """Successively repaired versions of ``text`` to try, cheapest first."""
    out = [text]
    stripped = text.strip(_TYPOGRAPHIC).strip()
    if stripped != text:
        out.append(stripped)
    unescaped = stripped.replace('\\"', '"')
    if unescaped != stripped:
        out.append(unescaped)
    for t in list(out):
        fixed = _TRAILING_COMMA.sub(r"\1", t)
        if fixed != t:
            out.append(fixed)
    return out
