"""order_archive partitioned by month of fetched_at; an index for pruning finished queue rows

Revision ID: 0009
Revises: 0008
Create Date: 2026-11-22

``order_archive`` becomes a table partitioned by RANGE on ``fetched_at``, one partition per
month (UTC) plus a default partition, so that retention can drop a whole month. The upgrade works
on a database that already holds data: the new partitioned table is created next to the old one,
partitions cover every month of the existing rows (at most ten years back; older rows land in the
default partition) up to two months ahead, the rows are copied with their ids, the old table is
dropped and the new one takes its name, id sequence, index, comments and grants. PostgreSQL
requires the partition key in every unique key, so the primary key becomes ``(id, fetched_at)``
(ids still come from the one sequence and stay unique). ``etl_raw`` reads the table by name and
keeps working. The downgrade copies the rows back into a plain table.

``sync_queue`` gets a partial index on ``done_at`` of finished rows (what ``etl prune`` reads);
finished rows written before ``done_at`` existed take their ``updated_at``.
"""

from collections.abc import Sequence
from datetime import UTC, datetime

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

AHEAD_MONTHS = 2
MAX_MONTHS_BACK = 120
COLUMNS = "id, api, order_key, fetched_at, payload_hash, raw, archived_at"
TABLE_COMMENT = (
    "every version of every order, as received: the one place raw JSON is stored "
    "(partitioned by month of fetched_at)"
)
OLD_TABLE_COMMENT = "every version of every order, as received: the one place raw JSON is stored"
FETCHED_COMMENT = "when this version was fetched (the monthly partition it lives in)"
OLD_FETCHED_COMMENT = "when this version was fetched"
COLUMN_COMMENTS = {
    "id": "row id",
    "api": "wdk or omni",
    "order_key": "biz_order_id (wdk) or order_id (omni), as text",
    "payload_hash": "sha256 of the canonical payload",
    "raw": "the order as received (simplified shape), JSON text; read it with raw::jsonb",
    "archived_at": "when it was archived",
}
# etl_raw reads the current version in the partition of the order row's fetched_at (the version
# was archived with it) instead of probing every month's index; the search of 0008 stays as the
# fallback (a version archived with another time, an order no longer in its table).
ETL_RAW = """
CREATE OR REPLACE FUNCTION etl_raw(p_api text, p_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    current_hash text;
    current_at timestamptz;
    found text;
BEGIN
    IF p_api = 'wdk' THEN
        SELECT payload_hash, fetched_at INTO current_hash, current_at FROM wdk_orders
        WHERE biz_order_id = p_key::bigint;
    ELSIF p_api = 'omni' THEN
        SELECT payload_hash, fetched_at INTO current_hash, current_at FROM omni_orders
        WHERE order_id = p_key;
    ELSE
        RAISE EXCEPTION 'etl_raw: api must be wdk or omni, not %', p_api;
    END IF;
    IF current_hash IS NOT NULL THEN
        SELECT a.raw INTO found FROM order_archive a
        WHERE a.api = p_api AND a.order_key = p_key AND a.payload_hash = current_hash
          AND a.fetched_at = current_at
        ORDER BY a.id DESC LIMIT 1;
        IF found IS NOT NULL THEN
            RETURN found::jsonb;
        END IF;
    END IF;
    -- the stored version; an order no longer in its table gives its latest archived version
    RETURN (
        SELECT a.raw::jsonb FROM order_archive a
        WHERE a.api = p_api AND a.order_key = p_key
          AND (current_hash IS NULL OR a.payload_hash = current_hash)
        ORDER BY a.fetched_at DESC, a.id DESC LIMIT 1
    );
END $$
"""


def _etl_raw_0008() -> str:
    """0008's etl_raw (what the downgrade puts back)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).with_name("0008_raw_once.py")
    spec = importlib.util.spec_from_file_location("etl_migration_0008", path)
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return str(module.ETL_RAW).replace("CREATE FUNCTION", "CREATE OR REPLACE FUNCTION", 1)


INDEX = "ix_order_archive_api_order_key_fetched_at"
FINISHED_INDEX = "ix_sync_queue_finished_done_at"
FINISHED = "state IN ('done', 'not_found', 'dead')"


def _month(year: int, month: int, add: int = 0) -> datetime:
    index = year * 12 + month - 1 + add
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


def _table_sql(name: str, partitioned: bool) -> str:
    pk = "id, fetched_at" if partitioned else "id"
    tail = " PARTITION BY RANGE (fetched_at)" if partitioned else ""
    return (
        f"CREATE TABLE {name} ("
        "id bigint NOT NULL DEFAULT nextval('order_archive_id_seq'::regclass), "
        "api text NOT NULL, order_key text NOT NULL, fetched_at timestamptz NOT NULL, "
        "payload_hash text NOT NULL, raw text NOT NULL, "
        "archived_at timestamptz NOT NULL DEFAULT now(), "
        f"CONSTRAINT pk_order_archive PRIMARY KEY ({pk})){tail}"
    )


def _grants(table: str) -> list[tuple[str, str]]:
    rows = op.get_bind().execute(
        sa.text(
            "SELECT grantee, privilege_type FROM information_schema.role_table_grants "
            "WHERE table_schema = current_schema() AND table_name = :t "
            "AND grantee <> current_user"
        ),
        {"t": table},
    )
    return [(r[0], r[1]) for r in rows]


def _swap_in(old: str, grants: list[tuple[str, str]], partitioned: bool) -> None:
    """The new order_archive (already filled) takes the old one's place."""
    op.execute("ALTER SEQUENCE order_archive_id_seq OWNED BY order_archive.id")
    op.execute(f"DROP TABLE {old}")
    op.execute(f"CREATE INDEX {INDEX} ON order_archive (api, order_key, fetched_at)")
    comment = TABLE_COMMENT if partitioned else OLD_TABLE_COMMENT
    op.execute(f"COMMENT ON TABLE order_archive IS '{comment}'")
    comments = {
        **COLUMN_COMMENTS,
        "fetched_at": FETCHED_COMMENT if partitioned else OLD_FETCHED_COMMENT,
    }
    for column, text in comments.items():
        op.execute(f"COMMENT ON COLUMN order_archive.{column} IS '{text}'")
    for grantee, privilege in grants:
        op.execute(f'GRANT {privilege} ON order_archive TO "{grantee}"')


def _set_aside() -> list[tuple[str, str]]:
    grants = _grants("order_archive")
    op.execute("ALTER TABLE order_archive RENAME TO order_archive_old")
    op.execute("ALTER TABLE order_archive_old RENAME CONSTRAINT pk_order_archive TO pk_old")
    op.execute(f"ALTER INDEX {INDEX} RENAME TO ix_order_archive_old")
    return grants


def upgrade() -> None:
    op.execute(f"UPDATE sync_queue SET done_at = updated_at WHERE {FINISHED} AND done_at IS NULL")
    op.create_index(FINISHED_INDEX, "sync_queue", ["done_at"], postgresql_where=sa.text(FINISHED))

    grants = _set_aside()
    op.execute(_table_sql("order_archive", partitioned=True))
    now = datetime.now(UTC)
    oldest = (
        op.get_bind().execute(sa.text("SELECT min(fetched_at) FROM order_archive_old")).scalar()
    )
    first = _month(now.year, now.month)
    floor = _month(now.year, now.month, -MAX_MONTHS_BACK)
    if oldest is not None:
        first = max(min(_month(oldest.year, oldest.month), first), floor)
    month = first
    last = _month(now.year, now.month, AHEAD_MONTHS)
    while month <= last:
        end = _month(month.year, month.month, 1)
        name = f"order_archive_{month.year:04d}_{month.month:02d}"
        op.execute(
            f"CREATE TABLE {name} PARTITION OF order_archive "
            f"FOR VALUES FROM ('{month.isoformat()}') TO ('{end.isoformat()}')"
        )
        op.execute(
            f"COMMENT ON TABLE {name} IS 'order_archive rows fetched in {month:%Y-%m} (UTC)'"
        )
        month = end
    op.execute("CREATE TABLE order_archive_default PARTITION OF order_archive DEFAULT")
    op.execute(
        "COMMENT ON TABLE order_archive_default IS "
        "'order_archive rows of months without a partition of their own'"
    )
    op.execute(f"INSERT INTO order_archive ({COLUMNS}) SELECT {COLUMNS} FROM order_archive_old")
    _swap_in("order_archive_old", grants, partitioned=True)
    op.execute(ETL_RAW)


def downgrade() -> None:
    grants = _set_aside()
    op.execute(_table_sql("order_archive", partitioned=False))
    op.execute(
        f"INSERT INTO order_archive ({COLUMNS}) SELECT {COLUMNS} FROM order_archive_old ORDER BY id"
    )
    _swap_in("order_archive_old", grants, partitioned=False)  # drops its partitions too
    op.execute(_etl_raw_0008())
    op.drop_index(FINISHED_INDEX, table_name="sync_queue")
