"""shared quota: leases and daily call counts per app key; queue priorities

Revision ID: 0007
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)


def _col(name: str, type_: sa.types.TypeEngine, comment: str, **kw: object) -> sa.Column:  # type: ignore[type-arg]
    kw.setdefault("nullable", False)
    return sa.Column(name, type_, autoincrement=False, comment=comment, **kw)  # type: ignore[arg-type]


def upgrade() -> None:
    op.add_column(
        "sync_queue",
        _col(
            "priority",
            sa.SmallInteger(),
            "claimed in this order, lower first: 0 live (messages, refreshes, by hand), 10 bulk",
            server_default="0",
        ),
    )
    op.create_index(
        "ix_sync_queue_due_priority",
        "sync_queue",
        ["api", "priority", "next_attempt_at", "id"],
        unique=False,
        postgresql_where=sa.text("state IN ('pending', 'failed', 'not_found')"),
    )
    op.create_table(
        "top_quota_leases",
        _col("app_key", sa.Text(), "the app key whose quota (top_qps) is shared"),
        _col("holder", sa.Text(), "the process holding a share: host:pid#token"),
        _col("role", sa.Text(), "worker, sync, backfill, ... (what the process is)"),
        _col("quota", sa.Float(), "the app key's top_qps as this process reads it"),
        _col("units", sa.Integer(), "calls per second granted to it", server_default="0"),
        _col(
            "releasing",
            sa.Integer(),
            "calls per second it gave back, still counted until release_until",
            server_default="0",
        ),
        _col("release_until", TZ, "when the units given back are free for others", nullable=True),
        _col("demand", sa.Integer(), "calls per second it could use", server_default="0"),
        _col("rate", sa.Float(), "calls per second it made lately", server_default="0"),
        _col("started_at", TZ, "when it took the lease", server_default=sa.text("now()")),
        _col("renewed_at", TZ, "last renewal", server_default=sa.text("now()")),
        _col("expires_at", TZ, "the lease lapses then unless renewed"),
        sa.PrimaryKeyConstraint("app_key", "holder", name=op.f("pk_top_quota_leases")),
        comment="shares of each app key's quota held by live processes (short leases, renewed ~1/s)",
    )
    op.create_table(
        "top_quota_days",
        _col("app_key", sa.Text(), "the app key"),
        _col("day", sa.Date(), "China-time (Asia/Shanghai) day"),
        _col("calls", sa.BigInteger(), "platform calls made that day", server_default="0"),
        _col("updated_at", TZ, "last count", server_default=sa.text("now()")),
        sa.PrimaryKeyConstraint("app_key", "day", name=op.f("pk_top_quota_days")),
        comment="platform calls per app key and China-time day (for top_daily_budget)",
    )


def downgrade() -> None:
    op.drop_table("top_quota_days")
    op.drop_table("top_quota_leases")
    op.drop_index(
        "ix_sync_queue_due_priority",
        table_name="sync_queue",
        postgresql_where=sa.text("state IN ('pending', 'failed', 'not_found')"),
    )
    op.drop_column("sync_queue", "priority")
