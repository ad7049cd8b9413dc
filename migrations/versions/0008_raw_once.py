"""raw JSON stored once per version, as text, in order_archive

Revision ID: 0008
Revises: 0004
Create Date: 2026-11-22

Before: every order row carried its payload in a ``raw jsonb`` column and every changed version
was copied again into ``order_archive.raw`` (jsonb): each payload parsed by the server and
stored twice. After: ``order_archive`` is the one place raw JSON lives, as ``text`` (the server
neither parses it nor stores it twice; TOAST compresses it), one row per version; an order row
finds its current version by ``(api, order_key, payload_hash)``. ``etl_raw(api, key)`` returns
an order's current raw JSON as jsonb.

The upgrade converts existing data in place: a current version that was never archived (e.g.
rows written before the archive existed) is archived first, so no payload is lost.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

PARENTS = (("wdk", "wdk_orders", "biz_order_id"), ("omni", "omni_orders", "order_id"))

HASH_COMMENT = (
    "sha256 of the canonical payload; its raw JSON is the order_archive row with this hash"
)
OLD_HASH_COMMENT = "sha256 of the canonical payload"
SYNCED_COMMENT = (
    "when etl last wrote the order (new or changed content); an unchanged re-fetch "
    "is recorded on its sync_queue row (done_at), not here"
)
OLD_SYNCED_COMMENT = "when etl last received the order"
RAW_COMMENT = "the order as received (simplified shape), JSON text; read it with raw::jsonb"
OLD_RAW_COMMENT = "the order exactly as received (simplified shape)"
KIND_COMMENT = "worker, sync, backfill, replay, demo, tmc or load"
OLD_KIND_COMMENT = "worker, sync, backfill, replay, demo or tmc"
ARCHIVE_COMMENT = "every version of every order, as received: the one place raw JSON is stored"
OLD_ARCHIVE_COMMENT = "every changed version of every order, as received: the audit trail"

ETL_RAW = """
CREATE FUNCTION etl_raw(p_api text, p_key text) RETURNS jsonb
LANGUAGE plpgsql STABLE AS $$
DECLARE
    current_hash text;
BEGIN
    IF p_api = 'wdk' THEN
        SELECT payload_hash INTO current_hash FROM wdk_orders
        WHERE biz_order_id = p_key::bigint;
    ELSIF p_api = 'omni' THEN
        SELECT payload_hash INTO current_hash FROM omni_orders WHERE order_id = p_key;
    ELSE
        RAISE EXCEPTION 'etl_raw: api must be wdk or omni, not %', p_api;
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
ETL_RAW_COMMENT = (
    "COMMENT ON FUNCTION etl_raw(text, text) IS "
    "'the raw JSON of an order''s stored version: etl_raw(''wdk'', ''500031414182214'')'"
)


def upgrade() -> None:
    for api, table, key in PARENTS:
        # A current version not archived yet (written before 0002, or by a lost race) is
        # archived now, so every stored payload stays reachable.
        op.execute(
            f"INSERT INTO order_archive (api, order_key, fetched_at, payload_hash, raw) "
            f"SELECT '{api}', o.{key}::text, o.fetched_at, o.payload_hash, o.raw "
            f"FROM {table} o WHERE NOT EXISTS (SELECT 1 FROM order_archive a "
            f"WHERE a.api = '{api}' AND a.order_key = o.{key}::text "
            f"AND a.payload_hash = o.payload_hash) ORDER BY o.{key}"
        )
    op.alter_column(
        "order_archive",
        "raw",
        type_=sa.Text(),
        postgresql_using="raw::text",
        existing_nullable=False,
        comment=RAW_COMMENT,
        existing_comment=OLD_RAW_COMMENT,
    )
    op.create_table_comment("order_archive", ARCHIVE_COMMENT, existing_comment=OLD_ARCHIVE_COMMENT)
    for _, table, _ in PARENTS:
        op.drop_column(table, "raw")
        op.alter_column(
            table,
            "payload_hash",
            existing_type=sa.Text(),
            existing_nullable=False,
            comment=HASH_COMMENT,
            existing_comment=OLD_HASH_COMMENT,
        )
        op.alter_column(
            table,
            "synced_at",
            existing_type=sa.DateTime(timezone=True),
            existing_nullable=False,
            existing_server_default=sa.text("now()"),
            comment=SYNCED_COMMENT,
            existing_comment=OLD_SYNCED_COMMENT,
        )
    op.execute(ETL_RAW)
    op.execute(ETL_RAW_COMMENT)
    op.alter_column(
        "sync_runs",
        "kind",
        existing_type=sa.Text(),
        existing_nullable=False,
        comment=KIND_COMMENT,
        existing_comment=OLD_KIND_COMMENT,
    )


def downgrade() -> None:
    op.alter_column(
        "sync_runs",
        "kind",
        existing_type=sa.Text(),
        existing_nullable=False,
        comment=OLD_KIND_COMMENT,
        existing_comment=KIND_COMMENT,
    )
    op.execute("DROP FUNCTION IF EXISTS etl_raw(text, text)")
    op.alter_column(
        "order_archive",
        "raw",
        type_=postgresql.JSONB(astext_type=sa.Text()),
        postgresql_using="raw::jsonb",
        existing_nullable=False,
        comment=OLD_RAW_COMMENT,
        existing_comment=RAW_COMMENT,
    )
    op.create_table_comment("order_archive", OLD_ARCHIVE_COMMENT, existing_comment=ARCHIVE_COMMENT)
    for api, table, key in PARENTS:
        op.add_column(
            table,
            sa.Column(
                "raw",
                postgresql.JSONB(astext_type=sa.Text()),
                autoincrement=False,
                nullable=True,
                comment=OLD_RAW_COMMENT,
            ),
        )
        op.execute(
            f"UPDATE {table} o SET raw = coalesce((SELECT a.raw FROM order_archive a "
            f"WHERE a.api = '{api}' AND a.order_key = o.{key}::text "
            f"AND a.payload_hash = o.payload_hash ORDER BY a.fetched_at DESC LIMIT 1), "
            f"'{{}}'::jsonb)"
        )
        op.alter_column(table, "raw", nullable=False, existing_type=postgresql.JSONB())
        op.alter_column(
            table,
            "payload_hash",
            existing_type=sa.Text(),
            existing_nullable=False,
            comment=OLD_HASH_COMMENT,
            existing_comment=HASH_COMMENT,
        )
        op.alter_column(
            table,
            "synced_at",
            existing_type=sa.DateTime(timezone=True),
            existing_nullable=False,
            existing_server_default=sa.text("now()"),
            comment=OLD_SYNCED_COMMENT,
            existing_comment=SYNCED_COMMENT,
        )
