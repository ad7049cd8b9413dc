"""Reading ids from arguments, files and stdin (pure): every bad line is reported by number."""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable
from dataclasses import dataclass, field

from etl.top.apis import validate_id

OMNI_FIELDS = ("user_id", "order_id", "out_order_id")


@dataclass
class ParsedIds:
    keys: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "where: line N: problem"
    duplicates: int = 0


def _omni_key(fields: list[str]) -> str:
    if len(fields) != 3:
        raise ValueError(f"expected 3 fields user_id,order_id,out_order_id, got {len(fields)}")
    user_id, order_id, out_order_id = (f.strip() for f in fields)
    for name, value in zip(OMNI_FIELDS, (user_id, order_id, out_order_id), strict=True):
        if not value:
            raise ValueError(f"{name} is empty")
        if not value.isascii() or any(ch in value for ch in ",\r\n\t"):
            raise ValueError(f"{name} {value!r} has characters an id cannot have")
    if not order_id.isdigit():
        raise ValueError(f"order_id {order_id!r} is not a number")
    return f"{user_id},{order_id},{out_order_id}"


def omni_parts(key: str) -> tuple[str, str, str]:
    user_id, order_id, out_order_id = key.split(",", 2)
    return user_id, order_id, out_order_id


def parse(lines: Iterable[str], api: str, id_kind: str, where: str = "input") -> ParsedIds:
    """Ids from ``lines``: blank lines and ``#`` comments are skipped; for omni, CSV lines
    ``user_id,order_id,out_order_id`` with an optional header line."""
    out = ParsedIds()
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        text = line.strip().lstrip("\ufeff")
        if not text or text.startswith("#"):
            continue
        try:
            if api == "omni":
                fields = next(csv.reader(io.StringIO(text)))
                if number == 1 and [f.strip().lower() for f in fields] == list(OMNI_FIELDS):
                    continue
                key = _omni_key(fields)
            else:
                key = validate_id(id_kind, text)
        except ValueError as exc:
            out.errors.append(f"{where}: line {number}: {exc}")
            continue
        if key in seen:
            out.duplicates += 1
            continue
        seen.add(key)
        out.keys.append(key)
    return out
