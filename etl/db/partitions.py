"""``order_archive``'s monthly partitions (RANGE on ``fetched_at``, months in UTC). Owns their SQL.

One partition per month, named ``order_archive_YYYY_MM``, plus ``order_archive_default`` for
anything outside the months created, so no insert ever fails. The worker, ``etl migrate`` and
``etl prune`` create the current month and :data:`AHEAD_MONTHS` more ahead, and a partition for
each month the default partition holds rows of (a history loaded with an old ``--fetched-at``).
A month is created as a plain table, filled with the rows of its range that the default
partition caught meanwhile, and then attached (``ATTACH PARTITION`` takes a lighter lock on the
parent than ``CREATE TABLE ... PARTITION OF``, which would also fail while the default partition
holds rows of the range).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.engine import Connection

PARENT = "order_archive"
DEFAULT = "order_archive_default"
AHEAD_MONTHS = 2  # months created ahead of the current one
LOCK_TIMEOUT = "5s"  # a partition change waits this long for its locks, then gives up
_MONTHLY = re.compile(r"^order_archive_(\d{4})_(\d{2})$")


@dataclass(frozen=True)
class Partition:
    name: str
    start: datetime | None  # None: the default partition
    end: datetime | None

    @property
    def is_default(self) -> bool:
        return self.start is None


def month_start(at: datetime) -> datetime:
    """The first instant (UTC) of ``at``'s month."""
    at = at.astimezone(UTC)
    return datetime(at.year, at.month, 1, tzinfo=UTC)


def add_months(month: datetime, n: int) -> datetime:
    index = month.year * 12 + month.month - 1 + n
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def name_of(month: datetime) -> str:
    return f"{PARENT}_{month.year:04d}_{month.month:02d}"


def is_partition_name(name: str) -> bool:
    """Whether ``name`` is one of order_archive's partitions (not in the schema module)."""
    return name == DEFAULT or _MONTHLY.match(name) is not None


def months_ahead(now: datetime, ahead: int = AHEAD_MONTHS) -> list[datetime]:
    first = month_start(now)
    return [add_months(first, i) for i in range(ahead + 1)]


def list_partitions(conn: Connection) -> list[Partition]:
    """The partitions attached to order_archive, oldest month first, the default last."""
    names = conn.execute(
        sa.text(
            "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
            "WHERE i.inhparent = CAST(:parent AS regclass)"
        ),
        {"parent": PARENT},
    ).scalars()
    out = []
    for name in names:
        m = _MONTHLY.match(name)
        if m:
            start = datetime(int(m[1]), int(m[2]), 1, tzinfo=UTC)
            out.append(Partition(name, start, add_months(start, 1)))
        elif name == DEFAULT:
            out.append(Partition(name, None, None))
    return sorted(out, key=lambda p: (p.start is None, p.start or datetime.min.replace(tzinfo=UTC)))


def create_month(conn: Connection, month: datetime) -> bool:
    """Create and attach ``month``'s partition (in the caller's transaction) unless it exists;
    rows of its range that the default partition holds move into it. True if created."""
    name = name_of(month)
    if any(p.name == name for p in list_partitions(conn)):
        return False
    end = add_months(month, 1)
    bounds = {"lo": month, "hi": end}
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(sa.text(f"CREATE TABLE {name} (LIKE {PARENT} INCLUDING DEFAULTS)"))
    conn.execute(
        sa.text(
            f"WITH moved AS (DELETE FROM {DEFAULT} WHERE fetched_at >= :lo AND fetched_at < :hi "
            f"RETURNING *) INSERT INTO {name} SELECT * FROM moved"
        ),
        bounds,
    )
    conn.execute(
        sa.text(
            f"ALTER TABLE {PARENT} ATTACH PARTITION {name} FOR VALUES "
            f"FROM ('{month.isoformat()}') TO ('{end.isoformat()}')"
        )
    )
    conn.execute(
        sa.text(f"COMMENT ON TABLE {name} IS 'order_archive rows fetched in {month:%Y-%m} (UTC)'")
    )
    return True


def ensure_ahead(conn: Connection, now: datetime | None = None) -> list[str]:
    """Create the partitions of the current month and AHEAD_MONTHS more that are missing, and
    those of the months the default partition holds rows of."""
    created = split_default(conn)
    for month in months_ahead(now or datetime.now(UTC)):
        if create_month(conn, month):
            created.append(name_of(month))
    return created


def default_months(conn: Connection) -> list[datetime]:
    """The months (UTC) of the rows the default partition holds (a history loaded with an old
    ``--fetched-at``, or a worker that did not run for months)."""
    rows = conn.execute(
        sa.text(
            f"SELECT DISTINCT date_trunc('month', fetched_at AT TIME ZONE 'UTC') FROM {DEFAULT}"
        )
    ).scalars()
    return sorted(m.replace(tzinfo=UTC) for m in rows)


def split_default(conn: Connection) -> list[str]:
    """Give each month the default partition holds rows of a partition of its own."""
    created = []
    for month in default_months(conn):
        if create_month(conn, month):
            created.append(name_of(month))
    return created


def missing_ahead(conn: Connection, now: datetime | None = None) -> list[str]:
    """The partitions :func:`ensure_ahead` would create."""
    have = {p.name for p in list_partitions(conn)}
    months = [*default_months(conn), *months_ahead(now or datetime.now(UTC))]
    return sorted({n for n in map(name_of, months) if n not in have})


def drop(conn: Connection, name: str) -> None:
    """Detach and drop a monthly partition (in the caller's transaction)."""
    if not _MONTHLY.match(name):
        raise ValueError(f"not a monthly partition of {PARENT}: {name}")
    conn.execute(sa.text(f"SET LOCAL lock_timeout = '{LOCK_TIMEOUT}'"))
    conn.execute(sa.text(f"ALTER TABLE {PARENT} DETACH PARTITION {name}"))
    conn.execute(sa.text(f"DROP TABLE {name}"))
