"""The one orchestrator: a batch end to end (fetch → normalize → load → ack), and replay."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
from psycopg import sql
from sqlalchemy.engine import Engine

from etl.db import engine as db_engine
from etl.db import load, runs
from etl.normalize.orders import InvalidOrder, NormalizedOrder, normalize_omni, normalize_wdk

log = logging.getLogger(__name__)

REPLAY_BATCH = 1000


@dataclass
class Quality:
    """What normalization found odd in a run: bad fields by name, unknown fields (reported once)."""

    bad_fields: Counter[str] = field(default_factory=Counter)
    unknown_fields: set[str] = field(default_factory=set)
    invalid_orders: int = 0

    def note(self, order: NormalizedOrder) -> None:
        for name in order.bad_fields:
            self.bad_fields[_generic(name)] += 1
        self.unknown_fields.update(order.unknown_fields)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.bad_fields:
            out["bad_fields"] = dict(self.bad_fields)
        if self.unknown_fields:
            out["unknown_fields"] = sorted(self.unknown_fields)
        if self.invalid_orders:
            out["invalid_orders"] = self.invalid_orders
        return out

    def report(self) -> None:
        if self.unknown_fields:
            log.warning(
                "the platform sent fields the schema does not know (kept in raw): %s",
                ", ".join(sorted(self.unknown_fields)),
            )
        if self.bad_fields:
            log.warning("unreadable field values stored as NULL: %s", dict(self.bad_fields))


def _generic(name: str) -> str:
    """``sub_orders[3].ns_quantity`` → ``sub_orders[].ns_quantity``."""
    out, depth = [], 0
    for ch in name:
        if ch == "[":
            depth += 1
            out.append("[]")
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def normalize(
    api: str,
    raw: dict[str, Any],
    fetched_at: datetime,
    quality: Quality,
    user_id: str | None = None,
) -> NormalizedOrder | None:
    """Normalize one raw order, noting what was odd; None for an order that cannot be stored."""
    try:
        order = (
            normalize_wdk(raw, fetched_at)
            if api == "wdk"
            else normalize_omni(raw, fetched_at, user_id)
        )
    except InvalidOrder as exc:
        quality.invalid_orders += 1
        log.error("order cannot be stored: %s", exc)
        return None
    quality.note(order)
    return order


def _stored(conn: psycopg.Connection[Any], api: str, since: datetime | None) -> Iterator[list[Any]]:
    spec = load.SPECS[api]
    user = sql.SQL(", user_id") if api == "omni" else sql.SQL(", NULL")
    where = sql.SQL("WHERE synced_at >= %s") if since else sql.SQL("")
    stmt = sql.SQL("SELECT raw, fetched_at{user} FROM {table} {where} ORDER BY {key}").format(
        user=user, table=sql.Identifier(spec.table.name), where=where, key=sql.Identifier(spec.key)
    )
    with conn.cursor(name=f"replay_{api}") as cur:
        cur.itersize = REPLAY_BATCH
        cur.execute(stmt, (since,) if since else None)
        while rows := cur.fetchmany(REPLAY_BATCH):
            yield rows


def replay(
    engine: Engine, apis: tuple[str, ...] = ("wdk", "omni"), since: datetime | None = None
) -> runs.RunCounters:
    """Rebuild the relational rows of stored orders from their raw payloads (no platform calls).

    Every order is rewritten from ``raw`` (children replaced), in batches of REPLAY_BATCH, each
    its own transaction; ``changed_at`` does not move and nothing is archived.
    """
    counters = runs.RunCounters()
    quality = Quality()
    with engine.begin() as c:
        run_id = runs.start(c, "replay")
    status, error = "ok", None
    try:
        with (
            db_engine.psycopg_connection(engine) as reader,
            db_engine.psycopg_connection(engine) as writer,
        ):
            for api in apis:
                for rows in _stored(reader, api, since):
                    batch = [
                        o
                        for raw, at, user in rows
                        if (o := normalize(api, raw, at, quality, user)) is not None
                    ]
                    result = load.load(writer, api, batch, rebuild=True)
                    writer.commit()
                    counters.orders_updated += result.orders.inserted + result.orders.updated
                    counters.orders_stale += result.orders.stale
            reader.rollback()
    except BaseException as exc:
        status, error = (
            ("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"),
            str(exc),
        )
        raise
    finally:
        counters.details.update(quality.details())
        quality.report()
        with engine.begin() as c:
            runs.finish(c, run_id, counters, status, error)
    return counters
