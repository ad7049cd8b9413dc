"""backfill_ids without foreign keys: a backfill's membership rows are written with its queue rows

Revision ID: 0010
Revises: 0009
Create Date: 2026-11-23

A lone backfill writes, in each batch's transaction, the queue row of every id it fetched and
that row's membership in the backfill (``backfill_ids``). The two foreign keys of
``backfill_ids`` made PostgreSQL check and lock the referenced ``backfills`` and ``sync_queue``
rows once per membership row: ~11 us of PostgreSQL CPU an id of the ~33 those writes cost (40,000
ids in batches of 800). The rows both keys point at are the ones the same statement has just
written, and nothing in etl deletes a backfill; ``etl prune`` now deletes a pruned queue row's
memberships in the statement that deletes the row (what ``ON DELETE CASCADE`` did). The
downgrade removes memberships whose queue row or backfill is gone, then adds the keys back.
"""

from collections.abc import Sequence

from alembic import op

revision: str = "0010"
down_revision: str | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = (
    ("fk_backfill_ids_backfill_id_backfills", "backfills", "backfill_id"),
    ("fk_backfill_ids_queue_id_sync_queue", "sync_queue", "queue_id"),
)


def upgrade() -> None:
    for name, _, _ in KEYS:
        op.drop_constraint(name, "backfill_ids", type_="foreignkey")


def downgrade() -> None:
    op.execute(
        "DELETE FROM backfill_ids b WHERE NOT EXISTS (SELECT 1 FROM backfills f "
        "WHERE f.id = b.backfill_id) OR NOT EXISTS (SELECT 1 FROM sync_queue q "
        "WHERE q.id = b.queue_id)"
    )
    for name, table, column in KEYS:
        op.create_foreign_key(name, "backfill_ids", table, [column], ["id"], ondelete="CASCADE")
