"""Reading ids from arguments, files and stdin (pure): every bad line is reported by number.

:func:`chunks` streams: a file of ten million ids is read a chunk at a time, in bounded memory
(duplicates are folded within a chunk; the queue's unique key folds the rest).
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Iterator
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


CHUNK = 50_000  # ids per chunk


@dataclass
class Chunk:
    keys: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # "where: line N: problem"
    duplicates: int = 0  # within the chunk
    lines: int = 0  # the last line number read


def chunks(
    lines: Iterable[str], api: str, id_kind: str, where: str = "input", size: int = CHUNK
) -> Iterator[Chunk]:
    """Ids from ``lines``, ``size`` at a time: blank lines and ``#`` comments are skipped; for
    omni, CSV lines ``user_id,order_id,out_order_id`` with an optional header line."""
    out = Chunk()
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        out.lines = number
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
        if len(out.keys) >= size:
            yield out
            out, seen = Chunk(lines=number), set()
    yield out


def parse(lines: Iterable[str], api: str, id_kind: str, where: str = "input") -> ParsedIds:
    """All the ids of ``lines`` at once (arguments, small inputs; files go by :func:`chunks`)."""
    out = ParsedIds()
    for chunk in chunks(lines, api, id_kind, where, size=2**62):
        out.keys.extend(chunk.keys)
        out.errors.extend(chunk.errors)
        out.duplicates += chunk.duplicates
    return out
