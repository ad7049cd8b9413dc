"""Set-based, idempotent load of a batch of orders, inside the caller's transaction.

For one batch, on one psycopg connection already in a transaction:

1. read the hash and ``fetched_at`` of the batch's stored orders: an order with the same hash
   is *unchanged* (nothing at all is written for it, not even a row lock), one fetched before
   the stored one is *stale* (an older payload never overwrites a newer one); the rows of the
   *changed* ones are then locked in key order (``FOR UPDATE``) and read again; the rest are
   *new*;
2. fast path, under a savepoint: ``COPY`` the new orders' rows straight into the tables, update
   the changed parents from a staged copy, replace their children by ``COPY``, and ``COPY``
   each written version's raw JSON into ``order_archive`` (the one place raw JSON is stored);
3. if the fast path meets a unique violation (a concurrent writer inserted one of the new keys,
   or a sub-order moved between orders), the savepoint is rolled back and the batch goes
   through the staged upsert: ``COPY`` into temporary tables, then
   ``INSERT ... SELECT ... ON CONFLICT DO UPDATE`` with the hash / ``fetched_at`` guard.

Orders arrive as :class:`Encoded` (rows already in COPY text format, made off the loading
process by :mod:`etl.normalize.pool`) or as :class:`NormalizedOrder` (encoded here). An
:class:`Encoded` without rows is an order that looked unchanged before normalization; if the
stored row changed meanwhile it is normalized here, under the lock.

The caller commits (so the queue ack can share the transaction) or rolls back: a failure
anywhere leaves the database as before the batch. Overlapping batches lock in key order, so two
workers loading the same orders serialise instead of deadlocking.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from operator import itemgetter
from typing import Any

import orjson
import psycopg
import sqlalchemy as sa
from psycopg import sql
from psycopg._copy_base import format_row_text
from psycopg.adapt import Transformer

from etl.db import tables as t
from etl.normalize.orders import NormalizedOrder, normalize_omni, normalize_wdk

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
    fast_path: bool = False  # written by direct COPY (no conflict met)
    late_normalized: int = 0  # looked unchanged before normalizing, but were not under the lock

    @property
    def orders(self) -> TableCounts:
        return self.tables[SPECS[self.api].table.name]


ARCHIVE_COLUMNS = ["api", "order_key", "fetched_at", "payload_hash", "raw"]


@dataclass(slots=True)
class Encoded:
    """One order ready to load: rows per table in COPY text format (``None`` when it was not
    normalized because it looked unchanged), plus what the unchanged / stale checks need."""

    api: str
    key: Any
    payload_hash: str
    fetched_at: datetime
    raw: bytes  # UTF-8 JSON text, simplified shape
    user_id: str | None = None
    rows: dict[str, bytes] | None = None  # table -> COPY lines (order_archive included)
    counts: dict[str, int] | None = None  # child table -> number of rows
    bad_fields: list[str] = field(default_factory=list)
    unknown_fields: list[str] = field(default_factory=list)

    def __reduce__(self) -> tuple[type[Encoded], tuple[Any, ...]]:
        # a plain tuple: pickling is the hand-off to and from the normalizer processes, and
        # the dataclass default (a state list built through fields()) costs ~3x as much
        return (
            Encoded,
            (
                self.api,
                self.key,
                self.payload_hash,
                self.fetched_at,
                self.raw,
                self.user_id,
                self.rows,
                self.counts,
                self.bad_fields,
                self.unknown_fields,
            ),
        )


def _getter(columns: Sequence[str]) -> Callable[[dict[str, Any]], tuple[Any, ...]]:
    return itemgetter(*columns)


_GETTERS = {
    api: {
        table.name: _getter(cols)
        for table, cols in (
            (spec.table, spec.columns),
            *((c.table, c.columns) for c in spec.children),
        )
    }
    for api, spec in SPECS.items()
}


def copy_text(value: str | bytes) -> bytes:
    """``value`` as one field of COPY text format."""
    data = value.encode() if isinstance(value, str) else value
    if b"\\" in data:
        data = data.replace(b"\\", b"\\\\")
    if b"\n" in data or b"\r" in data or b"\t" in data:
        data = data.replace(b"\n", b"\\n").replace(b"\r", b"\\r").replace(b"\t", b"\\t")
    return data


def archive_line(order: Encoded) -> bytes:
    """The order_archive COPY line of ``order``'s version."""
    return (
        b"\t".join(
            (
                order.api.encode(),
                copy_text(str(order.key)),
                order.fetched_at.isoformat().encode(),
                order.payload_hash.encode(),
                copy_text(order.raw),
            )
        )
        + b"\n"
    )


def encode(order: NormalizedOrder, user_id: str | None = None, tx: Any = None) -> Encoded:
    """A normalized order as COPY lines (pure; psycopg's C row formatter where installed)."""
    tx = tx if tx is not None else Transformer()
    spec = SPECS[order.api]
    getters = _GETTERS[order.api]
    buf = bytearray()
    format_row_text(getters[spec.table.name](order.parent), tx, buf)
    rows = {spec.table.name: bytes(buf)}
    counts = {}
    for child in spec.children:
        name = child.table.name
        get = getters[name]
        buf = bytearray()
        items = order.children[name]
        for row in items:
            format_row_text(get(row), tx, buf)
        rows[name] = bytes(buf)
        counts[name] = len(items)
    out = Encoded(
        order.api,
        order.key,
        order.parent["payload_hash"],
        order.fetched_at,
        raw if isinstance(raw := order.parent["raw"], bytes) else raw.encode(),
        user_id if user_id is not None else order.parent.get("user_id"),
        rows,
        counts,
        order.bad_fields,
        order.unknown_fields,
    )
    rows[t.order_archive.name] = archive_line(out)
    return out


def renormalize(order: Encoded, parsed: dict[str, Any] | None = None) -> Encoded:
    """Normalize and encode an order kept as raw JSON (its hash already known); ``parsed``:
    its simplified dict when at hand, else its raw text is parsed."""
    raw = orjson.loads(order.raw) if parsed is None else parsed
    known = (order.raw, order.payload_hash)
    normalized = (
        normalize_wdk(raw, order.fetched_at, known=known)
        if order.api == "wdk"
        else normalize_omni(raw, order.fetched_at, order.user_id, known=known)
    )
    return encode(normalized, order.user_id)


def dedupe_latest(orders: Iterable[Encoded]) -> list[Encoded]:
    """One entry per key: the most recently fetched (the last one on a tie)."""
    latest: dict[Any, Encoded] = {}
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
    # One round trip for all of them (and for _clear_stage's deletes): a sync loop under a
    # quota loads small batches, and 8 statements a batch cost ~0.8 ms more (measured, 2 cores).
    creates = [
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (LIKE {} INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        ).format(_ident(_stage_name(table)), _ident(table.name))
        for table in (spec.table, *(c.table for c in spec.children))
    ]
    creates.append(
        sql.SQL(
            "CREATE TEMP TABLE IF NOT EXISTS {} (key {} PRIMARY KEY, inserted boolean) "
            "ON COMMIT DELETE ROWS"
        ).format(_ident(f"_changed_{spec.api}"), sql.SQL(spec.key_type))
    )
    cur.execute(sql.SQL("; ").join(creates))


def _clear_stage(cur: psycopg.Cursor[Any], spec: ParentSpec) -> None:
    names = [_stage_name(tb) for tb in (spec.table, *(c.table for c in spec.children))]
    cur.execute(
        sql.SQL("; ").join(
            sql.SQL("DELETE FROM {}").format(_ident(name))
            for name in (*names, f"_changed_{spec.api}")
        )
    )


def _copy_lines(
    cur: psycopg.Cursor[Any], table: str, columns: list[str], chunks: Iterable[bytes]
) -> None:
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(_ident(table), _cols(columns))
    with cur.copy(stmt) as copy:
        pending = bytearray()
        for chunk in chunks:
            pending += chunk
            if len(pending) > 1 << 20:
                copy.write(pending)
                pending = bytearray()
        if pending:
            copy.write(pending)


def _copy(
    cur: psycopg.Cursor[Any], table: str, columns: list[str], rows: Iterable[dict[str, Any]]
) -> None:
    """COPY rows given as dicts (used by the benchmark's floor)."""
    stmt = sql.SQL("COPY {} ({}) FROM STDIN").format(_ident(table), _cols(columns))
    with cur.copy(stmt) as copy:
        for row in rows:
            copy.write_row([row.get(c) for c in columns])


def _rows(orders: Sequence[Encoded], table: str) -> Iterable[bytes]:
    for order in orders:
        assert order.rows is not None
        yield order.rows[table]


def _existing(
    cur: psycopg.Cursor[Any], spec: ParentSpec, keys: list[Any], *, lock: bool
) -> dict[Any, tuple[str, datetime]]:
    stmt = sql.SQL(
        "SELECT {key}, payload_hash, fetched_at FROM {table} WHERE {key} = ANY(%s::{type}[]) "
        "ORDER BY {key}{lock}"
    ).format(
        key=_ident(spec.key),
        table=_ident(spec.table.name),
        type=sql.SQL(spec.key_type),
        lock=sql.SQL(" FOR UPDATE" if lock else ""),
    )
    cur.execute(stmt, (keys,))
    return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def _to_write(order: Encoded, stored: tuple[str, datetime] | None, rebuild: bool) -> bool:
    return stored is None or (
        order.fetched_at >= stored[1] and (rebuild or stored[0] != order.payload_hash)
    )


def stored_hashes(
    conn: psycopg.Connection[Any], api: str, keys: list[Any]
) -> dict[Any, tuple[str, datetime]]:
    """The stored ``(payload_hash, fetched_at)`` of those of ``keys`` that exist (no lock): what
    decides, before normalizing, which orders are unchanged. :func:`load` checks again under
    its lock."""
    spec = SPECS[api]
    stmt = sql.SQL(
        "SELECT {key}, payload_hash, fetched_at FROM {table} WHERE {key} = ANY(%s::{type}[])"
    ).format(key=_ident(spec.key), table=_ident(spec.table.name), type=sql.SQL(spec.key_type))
    with conn.cursor() as cur:
        cur.execute(stmt, (keys,))
        return {row[0]: (row[1], row[2]) for row in cur.fetchall()}


def _update_parents(cur: psycopg.Cursor[Any], spec: ParentSpec, rebuild: bool) -> None:
    """Changed parents (locked, guard already applied) from the stage, in place."""
    sets: list[sql.Composable] = [
        sql.SQL("{} = s.{}").format(_ident(c), _ident(c)) for c in spec.columns if c != spec.key
    ]
    if not rebuild:
        sets += [sql.SQL("synced_at = now()"), sql.SQL("changed_at = now()")]
    cur.execute(
        sql.SQL("UPDATE {table} AS t SET {sets} FROM {stage} AS s WHERE t.{key} = s.{key}").format(
            table=_ident(spec.table.name),
            sets=sql.SQL(", ").join(sets),
            stage=_ident(_stage_name(spec.table)),
            key=_ident(spec.key),
        )
    )


def _delete_children(
    cur: psycopg.Cursor[Any], spec: ParentSpec, child: ChildSpec, keys: list[Any]
) -> int:
    cur.execute(
        sql.SQL("DELETE FROM {} WHERE {} = ANY(%s::{}[])").format(
            _ident(child.table.name), _ident(child.parent_fk), sql.SQL(spec.key_type)
        ),
        (keys,),
    )
    return cur.rowcount


def _write_direct(
    cur: psycopg.Cursor[Any],
    spec: ParentSpec,
    new: list[Encoded],
    changed: list[Encoded],
    rebuild: bool,
    result: LoadResult,
) -> None:
    """The fast path: COPY straight into the tables (raises UniqueViolation on a conflict)."""
    counts = {name: TableCounts() for name in result.tables}
    if changed:
        _copy_lines(cur, _stage_name(spec.table), spec.columns, _rows(changed, spec.table.name))
        _update_parents(cur, spec, rebuild)
        keys = [o.key for o in changed]
        for child in spec.children:
            counts[child.table.name].deleted = _delete_children(cur, spec, child, keys)
    if new:
        _copy_lines(cur, spec.table.name, spec.columns, _rows(new, spec.table.name))
    written = [*new, *changed]
    written.sort(key=lambda o: o.key)
    for child in spec.children:
        name = child.table.name
        _copy_lines(cur, name, child.columns, _rows(written, name))
        counts[name].inserted = sum((o.counts or {}).get(name, 0) for o in written)
    if not rebuild:
        _copy_lines(cur, t.order_archive.name, ARCHIVE_COLUMNS, _rows(written, "order_archive"))
    counts[spec.table.name].inserted = len(new)
    counts[spec.table.name].updated = len(changed)
    for name, c in counts.items():
        result.tables[name].add(c)
    result.changed = [o.key for o in written]
    result.fast_path = True


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


def _write_staged(
    cur: psycopg.Cursor[Any],
    spec: ParentSpec,
    staged: list[Encoded],
    rebuild: bool,
    result: LoadResult,
) -> None:
    """The safe path: stage everything, upsert with the guard repeated in the statement."""
    _copy_lines(cur, _stage_name(spec.table), spec.columns, _rows(staged, spec.table.name))
    for child in spec.children:
        name = child.table.name
        _copy_lines(cur, _stage_name(child.table), child.columns, _rows(staged, name))
    _upsert_parents(cur, spec, rebuild)
    cur.execute(sql.SQL("SELECT key, inserted FROM {}").format(_ident(f"_changed_{spec.api}")))
    changed = cur.fetchall()
    result.changed = [k for k, _ in changed]
    counts = result.orders
    counts.inserted = sum(1 for _, ins in changed if ins)
    counts.updated = len(changed) - counts.inserted
    for child in spec.children:
        result.tables[child.table.name].add(_replace_children(cur, spec, child))
    written = set(result.changed)
    if not rebuild:
        archived = [o for o in staged if o.key in written]
        _copy_lines(cur, t.order_archive.name, ARCHIVE_COLUMNS, _rows(archived, "order_archive"))
    # Staged but refused by the guard: a concurrent writer stored a newer payload.
    lost = {o.key for o in staged} - written
    result.stale.extend(sorted(lost, key=str))


def _as_encoded(orders: Iterable[NormalizedOrder | Encoded]) -> Iterable[Encoded]:
    tx = Transformer()
    for order in orders:
        yield order if isinstance(order, Encoded) else encode(order, tx=tx)


def load(
    conn: psycopg.Connection[Any],
    api: str,
    orders: Iterable[NormalizedOrder | Encoded],
    *,
    rebuild: bool = False,
) -> LoadResult:
    """Load ``orders`` of ``api`` ("wdk" or "omni") in the caller's open transaction.

    ``rebuild=True`` (for ``etl replay``) rewrites every order not older than the stored one,
    even when its hash is unchanged, without moving ``changed_at`` or archiving.
    """
    spec = SPECS[api]
    batch = dedupe_latest(_as_encoded(orders))
    result = LoadResult(api, {spec.table.name: TableCounts()})
    for child in spec.children:
        result.tables[child.table.name] = TableCounts()
    if not batch:
        return result
    batch.sort(key=lambda o: o.key)
    with conn.cursor() as cur:
        _ensure_stage(cur, spec)
        existing = _existing(cur, spec, [o.key for o in batch], lock=False)
        # Lock (in key order) and read again only the rows this batch will rewrite: locking an
        # unchanged row would write its lock to the WAL for nothing, as it is not written.
        rewrite = [
            o.key for o in batch if o.key in existing and _to_write(o, existing[o.key], rebuild)
        ]
        if rewrite:
            existing.update(_existing(cur, spec, rewrite, lock=True))
        new: list[Encoded] = []
        changed: list[Encoded] = []
        unchanged: list[Encoded] = []
        for order in batch:
            stored = existing.get(order.key)
            if stored is None:
                new.append(order)
            elif order.fetched_at < stored[1]:
                result.stale.append(order.key)
            elif stored[0] == order.payload_hash and not rebuild:
                unchanged.append(order)
            else:
                changed.append(order)
        for group in (new, changed):
            for i, order in enumerate(group):
                if order.rows is None:
                    group[i] = renormalize(order)
                    result.late_normalized += 1
        result.orders.unchanged = len(unchanged)
        for child in spec.children:
            result.tables[child.table.name].unchanged = sum(
                (o.counts or {}).get(child.table.name, 0) for o in unchanged
            )
        if new or changed:
            try:
                with conn.transaction():  # a savepoint: the batch is already in a transaction
                    _write_direct(cur, spec, new, changed, rebuild, result)
            except psycopg.errors.UniqueViolation:
                for counts in result.tables.values():
                    counts.inserted = counts.updated = counts.deleted = 0
                result.fast_path = False
                _write_staged(
                    cur, spec, sorted([*new, *changed], key=lambda o: o.key), rebuild, result
                )
        result.orders.stale = len(result.stale)
        _clear_stage(cur, spec)
    return result
