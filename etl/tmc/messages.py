"""TMC messages (pure): which topics name an order, and what one message asks for.

A message is a hint that an order changed, never the order: it is turned into a queue entry
(:class:`Hint`), counted and confirmed (:class:`Unhandled`, a topic this product does not handle)
or kept for inspection and confirmed (:class:`Unreadable`). Ids are kept exact: the order id is a
JSON number in some topics and a string in others, and can exceed 2**53, so it never goes
through a float (orjson parses integers exactly).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from etl import chinatime


@dataclass(frozen=True)
class Topic:
    """A topic this product handles: the api and id kind it queues, and the content field."""

    name: str
    api: str
    id_kind: str
    id_field: str


# The topic table: a new topic is one line. From the public TMC type definitions
# (/work/shared/api/taobao.tmc.messages.txt §4); the id is a Number in the first two, a String in
# the last two.
TOPICS: dict[str, Topic] = {
    t.name: t
    for t in (
        Topic("alibaba_wdkorder_StatusChange", "wdk", "biz", "biz_order_id"),
        Topic("alibaba_wdkopen_OrderMessage", "wdk", "biz", "biz_order_id"),
        Topic("alibaba_wdk_ChannelOrderStatusChange", "wdk", "biz", "biz_order_id"),
        Topic("alibaba_wdk_ChannelOrderCancel", "wdk", "biz", "biz_order_id"),
    )
}

MAX_ID = 2**63 - 1  # ids are bigint


@dataclass(frozen=True)
class Hint:
    """Order ``key`` (of ``api`` / ``id_kind``) changed at ``pub_time``."""

    message_id: int
    topic: str
    api: str
    id_kind: str
    key: str
    pub_time: datetime


@dataclass(frozen=True)
class Unhandled:
    message_id: int
    topic: str


@dataclass(frozen=True)
class Unreadable:
    """A message that cannot be read; ``message_id`` is None when not even its id can be."""

    message_id: int | None
    topic: str | None
    content: str | None
    reason: str


Parsed = Hint | Unhandled | Unreadable


def message_id(raw: Mapping[str, Any]) -> int | None:
    """The message's id (a 19-digit Number, possibly sent as a string), exactly, or None."""
    return _exact_int(raw.get("id"))


def _exact_int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 < value <= MAX_ID else None
    if isinstance(value, str):
        text = value.strip()
        if text.isascii() and text.isdigit():
            number = int(text)
            return number if 0 < number <= MAX_ID else None
    return None  # floats (already rounded beyond 2**53), objects, null


def parse(raw: Mapping[str, Any], topics: Mapping[str, Topic] = TOPICS) -> Parsed:
    """What one consumed message asks for."""
    mid = message_id(raw)
    topic_value = raw.get("topic")
    topic = topic_value if isinstance(topic_value, str) and topic_value else None
    content_value = raw.get("content")
    content = content_value if isinstance(content_value, str) else _as_text(content_value)
    if mid is None:
        return Unreadable(None, topic, content, f"message id {raw.get('id')!r} is not an id")
    if topic is None:
        return Unreadable(mid, None, content, "message has no topic")
    spec = topics.get(topic)
    if spec is None:
        return Unhandled(mid, topic)
    return _hint(mid, spec, raw, content)


def _hint(mid: int, spec: Topic, raw: Mapping[str, Any], content: str | None) -> Parsed:
    def bad(reason: str) -> Unreadable:
        return Unreadable(mid, spec.name, content, reason)

    pub_time = _pub_time(raw.get("pub_time"))
    if pub_time is None:
        return bad(f"pub_time {raw.get('pub_time')!r} is not yyyy-MM-dd HH:mm:ss")
    if content is None:
        return bad("content is missing")
    try:
        body = orjson.loads(content)
    except orjson.JSONDecodeError as exc:
        return bad(f"content is not JSON: {exc}")
    if not isinstance(body, dict):
        return bad(f"content is a JSON {type(body).__name__}, not an object")
    if spec.id_field not in body:
        return bad(f"content has no {spec.id_field}")
    key = _exact_int(body[spec.id_field])
    if key is None:
        return bad(f"{spec.id_field} {body[spec.id_field]!r} is not a positive 64-bit integer")
    return Hint(mid, spec.name, spec.api, spec.id_kind, str(key), pub_time)


def _pub_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return chinatime.parse(value.strip())
    except ValueError:
        return None


def _as_text(value: Any) -> str | None:
    if value is None:
        return None
    try:
        return orjson.dumps(value).decode()
    except TypeError:
        return repr(value)


@dataclass
class Batch:
    """One consume call's messages, sorted out: hints merged per order (many messages of one
    order → one entry, with its first and last pub_time), messages per topic, unreadable
    messages, and every message id to confirm once the batch is queued."""

    # (api, id_kind, key) -> (first pub_time, last pub_time, messages)
    hints: dict[tuple[str, str, str], tuple[datetime, datetime, int]] = field(default_factory=dict)
    handled: dict[str, int] = field(default_factory=dict)  # topic -> messages queued
    unhandled: dict[str, int] = field(default_factory=dict)  # topic -> messages only counted
    unreadable: list[Unreadable] = field(default_factory=list)
    confirm: list[int] = field(default_factory=list)
    messages: int = 0


def sort_out(raws: Iterable[Mapping[str, Any]], topics: Mapping[str, Topic] = TOPICS) -> Batch:
    """Parse a consume call's messages into one :class:`Batch`."""
    batch = Batch()
    seen: set[int] = set()
    for raw in raws:
        batch.messages += 1
        parsed = parse(raw, topics)
        mid = parsed.message_id
        if mid is not None and mid not in seen:
            seen.add(mid)
            batch.confirm.append(mid)
        if isinstance(parsed, Hint):
            where = (parsed.api, parsed.id_kind, parsed.key)
            first, last, n = batch.hints.get(where, (parsed.pub_time, parsed.pub_time, 0))
            batch.hints[where] = (min(first, parsed.pub_time), max(last, parsed.pub_time), n + 1)
            batch.handled[parsed.topic] = batch.handled.get(parsed.topic, 0) + 1
        elif isinstance(parsed, Unhandled):
            batch.unhandled[parsed.topic] = batch.unhandled.get(parsed.topic, 0) + 1
        else:
            batch.unreadable.append(parsed)
    return batch
