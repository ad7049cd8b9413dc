"""Set-based, idempotent upsert of a batch of normalized orders, inside the caller's transaction.

For one batch, on one psycopg connection already in a transaction:

1. lock the batch's existing parent rows in key order (``FOR UPDATE``) and read their hash and
   ``fetched_at``: an order with the same hash is *unchanged* (only ``synced_at`` moves, its
   children are not touched, nothing is staged); one fetched before the stored one is *stale*
   (an older payload never overwrites a newer one); the rest are staged;
2. ``COPY`` the staged parents and their children into temporary tables;
3. ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` the parents (the hash / ``fetched_at`` guard
   is repeated in the statement), replace the children of the orders that changed, and append
   each changed version to ``order_archive``.

The caller commits (so the queue ack can share the transaction) or rolls back: a failure
anywhere leaves the database as before the batch. Overlapping batches lock in key order, so two
workers loading the same orders serialise instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql

from etl.db import tables as t
from etl.normalize.orders import NormalizedOrder

BOOKKEEPING_DEFAULTS = ("first_synced_at", "synced_at", "changed_at")


@dataclass(frozen=True)
class ChildSpec:
    table: sa.Table
    parent_fk: str
    own_key: tuple[str, ...] | None  # rows with a key of their own may move between parents

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.table.columns]


@dataclass(frozen=True)
class ParentSpec:
    api: str
    table: sa.Table
    key: str
    key_type: str
    children: tuple[ChildSpec, ...]

    @property
    def columns(self) -> list[str]:
        return [c.name for c in self.table.columns if c.name not in BOOKKEEPING_DEFAULTS]


WDK = ParentSpec(
    "wdk",
    t.wdk_orders,
    "biz_order_id",
    "bigint",
    (
        ChildSpec(t.wdk_pay_channels, "biz_order_id", None),
        ChildSpec(t.wdk_sub_orders, "order_biz_order_id", ("biz_order_id",)),
    ),
)
OMNI = ParentSpec(
    "omni",
    t.omni_orders,
    "order_id",
    "text",
    (
        ChildSpec(t.omni_subpay_orders, "order_id", ("subpay_order_id",)),
        ChildSpec(t.omni_pay_serials, "order_id", None),
    ),
)
SPECS = {"wdk": WDK, "omni": OMNI}


@dataclass
class TableCounts:
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    stale: int = 0
    deleted: int = 0

    def add(self, other: TableCounts) -> None:
        for name in ("inserted", "updated", "unchanged", "stale", "deleted"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class LoadResult:
    """Per-table counts of one batch, and the keys of the orders that changed."""

    api: str
    tables: dict[str, TableCounts] = field(default_factory=dict)
    changed: list[Any] = field(default_factory=list)
    stale: list[Any] = field(default_factory=list)

    @property
    def orders(self) -> TableCounts:
        return self.tables[SPECS[self.api].table.name]


def dedupe_latest(orders: Iterable[NormalizedOrder]) -> list[NormalizedOrder]:
    """One entry per key: the most recently fetched (the last one on a tie)."""
    latest: dict[Any, NormalizedOrder] = {}
    for order in orders:
        kept = latest.get(order.key)
        if kept is None or order.fetched_at >= kept.fetched_at:
            latest[order.key] = order
    return list(latest.values())


def _ident(name: str) -> sql.Identifier:
    return sql.Identifier(name)


def _cols(names: Sequence[str], prefix: str | None = None) -> sql.Composed:
    if prefix:
        return sql.SQL(", ").join(sql.Identifier(prefix, n) for n in names)
    return sql.SQL(", ").join(map(_ident, names))


def _stage_name(table: sa.Table) -> str:
    return f"_stage_{table.name}"


def _ensure_stage(cur: psycopg.Cursor[Any], spec: ParentSpec) -> None:
    for table in (spec.table, *(c.table for c in spec.children)):
        cur.execute(
            sql.SQL(
                "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) "
                "ON COMMIT DELETE ROWS"
            ).format(_ident(_stage_name(table)), _ident(table.name))
        )
    cur.execute(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (key {} PRIMARY KEY, inserted boolean) "
            "ON COMMIT DELETE ROWS"
        ).format(_ident(f"_changed_{spec.api}"), sql.SQL(spec.key_type))
    )


def _copy(
    cur: psycopg.Cursor[Any], table: str, columns: list[str], rows: Iterable[dict[str, Any]]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(_ident(table), _cols(columns))
    with cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row([row.get(c) for c in columns])


def _existing(
    cur: psycopg.Cursor[Any], spec: ParentSpec, keys: list[Any]
) -> dict[Any, tuple[str, datetime]]:
    stmt = sql.SQL(
        "SELECT {key}, payload_hash, fetched_at FROM {table} WHERE {key} = ANY(%s::{type}[]) "
        "ORDER BY {key} FOR UPDATE"
    ).format(key=_ident(spec.key), table=_ident(spec.table.name), type=sql.SQL(spec.key_type))
    cur.execute(stmt, (keys,))
    return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def _touch_unchanged(
    cur: psycopg.Cursor[Any], spec: ParentSpec, orders: list[NormalizedOrder]
) -> None:
    if not orders:
        return
    stmt = sql.SQL(
        "UPDATE {table} AS t SET synced_at = now(), fetched_at = GREATEST(t.fetched_at, v.f) "
        "FROM (SELECT unnest(%s::{type}[]) AS k, unnest(%s::timestamptz[]) AS f) AS v "
        "WHERE t.{key} = v.k"
    ).format(table=_ident(spec.table.name), type=sql.SQL(spec.key_type), key=_ident(spec.key))
    cur.execute(stmt, ([o.key for o in orders], [o.fetched_at for o in orders]))


def _upsert_parents(cur: psycopg.Cursor[Any], spec: ParentSpec, rebuild: bool) -> None:
    cols = spec.columns
    sets: list[sql.Composable] = [
        sql.SQL("{} = EXCLUDED.{}").format(_ident(c), _ident(c)) for c in cols if c != spec.key
    ]
    guard: sql.Composable
    if rebuild:
        guard = sql.SQL("t.fetched_at <= EXCLUDED.fetched_at")
    else:
        sets += [sql.SQL("synced_at = now()"), sql.SQL("changed_at = now()")]
        guard = sql.SQL(
            "t.payload_hash <> EXCLUDED.payload_hash AND t.fetched_at <= EXCLUDED.fetched_at"
        )
    stmt = sql.SQL(
        "WITH up AS (INSERT INTO {table} AS t ({cols}) SELECT {cols} FROM {stage} ORDER BY {key} "
        "ON CONFLICT ({key}) DO UPDATE SET {sets} WHERE {guard} "
        "RETURNING t.{key}, (t.xmax = 0) AS inserted) "
        "INSERT INTO {changed} SELECT * FROM up"
    ).format(
        table=_ident(spec.table.name),
        cols=_cols(cols),
        stage=_ident(_stage_name(spec.table)),
        key=_ident(spec.key),
        sets=sql.SQL(", ").join(sets),
        guard=guard,
        changed=_ident(f"_changed_{spec.api}"),
    )
    cur.execute(stmt)


def _replace_children(cur: psycopg.Cursor[Any], spec: ParentSpec, child: ChildSpec) -> TableCounts:
    changed = _ident(f"_changed_{spec.api}")
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE {} IN (SELECT key FROM {})").format(
            _ident(child.table.name), _ident(child.parent_fk), changed
        )
    )
    deleted = cur.rowcount
    cols = child.columns
    conflict: sql.Composable = sql.SQL("")
    if child.own_key:
        sets = [
            sql.SQL("{} = EXCLUDED.{}").format(_ident(c), _ident(c))
            for c in cols
            if c not in child.own_key
        ]
        conflict = sql.SQL(" ON CONFLICT ({}) DO UPDATE SET {}").format(
            _cols(child.own_key), sql.SQL(", ").join(sets)
        )
    cur.execute(
        sql.SQL(
            "INSERT INTO {table} ({cols}) SELECT {cols} FROM {stage} "
            "WHERE {fk} IN (SELECT key FROM {changed}) ORDER BY {order}{conflict}"
        ).format(
            table=_ident(child.table.name),
            cols=_cols(cols),
            stage=_ident(_stage_name(child.table)),
            fk=_ident(child.parent_fk),
            changed=changed,
            order=_cols([c.name for c in child.table.primary_key.columns]),
            conflict=conflict,
        )
    )
    return TableCounts(inserted=cur.rowcount, deleted=deleted)


def _archive(cur: psycopg.Cursor[Any], spec: ParentSpec) -> None:
    cur.execute(
        sql.SQL(
            "INSERT INTO order_archive (api, order_key, fetched_at, payload_hash, raw) "
            "SELECT %s, s.{key}::text, s.fetched_at, s.payload_hash, s.raw FROM {stage} s "
            "JOIN {changed} c ON c.key = s.{key} ORDER BY s.{key}"
        ).format(
            key=_ident(spec.key),
            stage=_ident(_stage_name(spec.table)),
            changed=_ident(f"_changed_{spec.api}"),
        ),
        (spec.api,),
    )


def load(
    conn: psycopg.Connection[Any],
    api: str,
    orders: Iterable[NormalizedOrder],
    *,
    rebuild: bool = False,
) -> LoadResult:
    """Upsert ``orders`` of ``api`` ("wdk" or "omni") in the caller's open transaction.

    ``rebuild=True`` (for ``etl replay``) rewrites every order not older than the stored one,
    even when its hash is unchanged, without moving ``changed_at`` or archiving.
    """
    spec = SPECS[api]
    batch = dedupe_latest(orders)
    result = LoadResult(api, {spec.table.name: TableCounts()})
    counts = result.orders
    for child in spec.children:
        result.tables[child.table.name] = TableCounts()
    if not batch:
        return result
    with conn.cursor() as cur:
        _ensure_stage(cur, spec)
        existing = _existing(cur, spec, [o.key for o in batch])
        unchanged, staged = [], []
        for order in batch:
            stored = existing.get(order.key)
            if stored is not None and order.fetched_at < stored[1]:
                result.stale.append(order.key)
            elif stored is not None and stored[0] == order.parent["payload_hash"] and not rebuild:
                unchanged.append(order)
            else:
                staged.append(order)
        _touch_unchanged(cur, spec, unchanged)
        counts.unchanged = len(unchanged)
        for child in spec.children:
            result.tables[child.table.name].unchanged = sum(
                len(o.children[child.table.name]) for o in unchanged
            )
        if staged:
            _copy(cur, _stage_name(spec.table), spec.columns, (o.parent for o in staged))
            for child in spec.children:
                rows = (r for o in staged for r in o.children[child.table.name])
                _copy(cur, _stage_name(child.table), child.columns, rows)
            _upsert_parents(cur, spec, rebuild)
            cur.execute(
                sql.SQL("SELECT key, inserted FROM {}").format(_ident(f"_changed_{spec.api}"))
            )
            changed = cur.fetchall()
            result.changed = [k for k, _ in changed]
            counts.inserted = sum(1 for _, ins in changed if ins)
            counts.updated = len(changed) - counts.inserted
            for child in spec.children:
                result.tables[child.table.name].add(_replace_children(cur, spec, child))
            if not rebuild:
                _archive(cur, spec)
            # Staged but refused by the guard: a concurrent writer stored a newer payload.
            lost = {o.key for o in staged} - set(result.changed)
            result.stale.extend(sorted(lost, key=str))
        counts.stale = len(result.stale)
        cur.execute(sql.SQL("TRUNCATE {}").format(_ident(f"_changed_{spec.api}")))
    return result
