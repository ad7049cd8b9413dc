"""queue states, run heartbeats, credential holds

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22

- ``sync_queue.next_attempt_at`` becomes nullable: NULL means "never claimed again" (done, dead,
  not_found with no re-check left). A not-found id is in state ``not_found`` from its first
  not-found answer; while re-checks remain, ``next_attempt_at`` is the next re-check.
- ``sync_runs.heartbeat_at``: a run's last sign of life, so a killed run is visible as such.
- ``top_credential_holds``: an app key whose credentials the platform rejected.
- ``backfills`` / ``backfill_ids``: the ids of each ``etl backfill`` file, so a backfill claims,
  resumes and counts its own ids only.
- ``report_sync_freshness``: the backlog counts claimable work only, ``queue_oldest_pending`` is
  the oldest *due* time (never in the future), and not-found ids are counted apart.
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)

FRESHNESS_0004 = """
    WITH backlog AS (
        SELECT api,
               count(*) FILTER (WHERE state IN ('pending', 'failed', 'leased')) AS backlog,
               count(*) FILTER (WHERE state = 'dead') AS dead,
               min(next_attempt_at) FILTER (WHERE state IN ('pending', 'failed'))
                 AS oldest_pending
        FROM sync_queue GROUP BY api
    ), stores AS (
        SELECT 'wdk' AS api, store_id, count(*) AS orders, max(synced_at) AS last_synced_at,
               max(changed_at) AS last_changed_at, max(pay_time) AS last_pay_time
        FROM wdk_orders GROUP BY store_id
        UNION ALL
        SELECT 'omni', o2o_shop_id, count(*), max(synced_at), max(changed_at), NULL
        FROM omni_orders GROUP BY o2o_shop_id
    )
    SELECT s.api, s.store_id, s.orders, s.last_synced_at, s.last_changed_at, s.last_pay_time,
           date_trunc('second', now() - s.last_synced_at) AS lag,
           coalesce(b.backlog, 0) AS queue_backlog, coalesce(b.dead, 0) AS queue_dead,
           b.oldest_pending AS queue_oldest_pending
    FROM stores s LEFT JOIN backlog b ON b.api = s.api
"""

FRESHNESS_0005 = """
    WITH backlog AS (
        SELECT api,
               count(*) FILTER (WHERE state IN ('pending', 'failed', 'leased')) AS backlog,
               count(*) FILTER (WHERE state = 'dead') AS dead,
               min(next_attempt_at) FILTER (
                 WHERE state IN ('pending', 'failed') AND next_attempt_at <= now()
               ) AS oldest_pending,
               count(*) FILTER (WHERE state = 'not_found') AS not_found
        FROM sync_queue GROUP BY api
    ), stores AS (
        SELECT 'wdk' AS api, store_id, count(*) AS orders, max(synced_at) AS last_synced_at,
               max(changed_at) AS last_changed_at, max(pay_time) AS last_pay_time
        FROM wdk_orders GROUP BY store_id
        UNION ALL
        SELECT 'omni', o2o_shop_id, count(*), max(synced_at), max(changed_at), NULL
        FROM omni_orders GROUP BY o2o_shop_id
    )
    SELECT s.api, s.store_id, s.orders, s.last_synced_at, s.last_changed_at, s.last_pay_time,
           date_trunc('second', now() - s.last_synced_at) AS lag,
           coalesce(b.backlog, 0) AS queue_backlog, coalesce(b.dead, 0) AS queue_dead,
           b.oldest_pending AS queue_oldest_pending,
           coalesce(b.not_found, 0) AS queue_not_found
    FROM stores s LEFT JOIN backlog b ON b.api = s.api
"""


def upgrade() -> None:
    op.alter_column(
        "sync_queue",
        "next_attempt_at",
        existing_type=TZ,
        nullable=True,
        existing_server_default=sa.text("now()"),
        comment="claimable from this time (pending, failed, not_found awaiting a re-check); "
        "NULL = never",
        existing_comment="not to be claimed before this",
    )
    # Ids that were answered "not found" and wait for a re-check are not_found from now on;
    # finished rows are never claimed again.
    op.execute(
        "UPDATE sync_queue SET state = 'not_found' WHERE state = 'pending' AND not_found_checks > 0"
    )
    op.execute(
        "UPDATE sync_queue SET next_attempt_at = NULL WHERE state IN ('done', 'dead') "
        "OR (state = 'not_found' AND done_at IS NOT NULL)"
    )
    op.add_column(
        "sync_runs",
        sa.Column(
            "heartbeat_at",
            TZ,
            nullable=True,
            comment="last sign of life of the process (every batch and every ~15 s)",
        ),
    )
    op.alter_column(
        "sync_runs",
        "status",
        existing_type=sa.Text(),
        existing_nullable=False,
        existing_server_default="running",
        comment="running, ok, failed, interrupted or killed (its process vanished)",
        existing_comment="running, ok, failed or interrupted",
    )
    op.create_table(
        "top_credential_holds",
        sa.Column(
            "app_key",
            sa.Text(),
            nullable=False,
            comment="the app key whose credentials the platform rejected",
        ),
        sa.Column(
            "error_class",
            sa.Text(),
            nullable=True,
            comment="AuthError, SignatureError, AppKeyError or PermissionDenied",
        ),
        sa.Column(
            "setting",
            sa.Text(),
            nullable=True,
            comment="what the operator must fix, e.g. ETL_TOP_SESSION",
        ),
        sa.Column("message", sa.Text(), nullable=True, comment="the platform's answer"),
        sa.Column(
            "since", TZ, server_default=sa.text("now()"), nullable=False, comment="first rejection"
        ),
        sa.Column("next_try_at", TZ, nullable=False, comment="when a worker next tries one call"),
        sa.Column(
            "tries",
            sa.Integer(),
            server_default="0",
            nullable=False,
            comment="probe calls rejected so far",
        ),
        sa.Column(
            "updated_at",
            TZ,
            server_default=sa.text("now()"),
            nullable=False,
            comment="last rejection",
        ),
        sa.PrimaryKeyConstraint("app_key", name=op.f("pk_top_credential_holds")),
        comment="credentials the platform rejected: workers stop calling and retry one call at "
        "a time",
    )
    op.create_table(
        "backfills",
        sa.Column("id", sa.BigInteger(), autoincrement=True, nullable=False, comment="backfill id"),
        sa.Column("api", sa.Text(), nullable=False, comment="wdk or omni"),
        sa.Column("id_kind", sa.Text(), nullable=False, comment="the id kind of its ids"),
        sa.Column(
            "fingerprint",
            sa.Text(),
            nullable=True,
            comment="sha256 of its ids in order: the same file given again resumes it",
        ),
        sa.Column(
            "source", sa.Text(), nullable=True, comment="the file it was read from (- for stdin)"
        ),
        sa.Column("ids", sa.Integer(), nullable=False, comment="how many ids it holds"),
        sa.Column(
            "created_at", TZ, server_default=sa.text("now()"), nullable=False, comment="first run"
        ),
        sa.Column(
            "last_run_at",
            TZ,
            server_default=sa.text("now()"),
            nullable=False,
            comment="latest run",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_backfills")),
        sa.UniqueConstraint(
            "api", "id_kind", "fingerprint", name=op.f("uq_backfills_api_id_kind_fingerprint")
        ),
        comment="one row per `etl backfill` id file: the ids a backfill claims, resumes and counts",
    )
    op.create_table(
        "backfill_ids",
        sa.Column("backfill_id", sa.BigInteger(), nullable=False, comment="backfills.id"),
        sa.Column(
            "queue_id", sa.BigInteger(), nullable=False, comment="sync_queue.id of one of its ids"
        ),
        sa.ForeignKeyConstraint(
            ["backfill_id"],
            ["backfills.id"],
            name=op.f("fk_backfill_ids_backfill_id_backfills"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["queue_id"],
            ["sync_queue.id"],
            name=op.f("fk_backfill_ids_queue_id_sync_queue"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("backfill_id", "queue_id", name=op.f("pk_backfill_ids")),
        comment="the queue rows of each backfill (a queue row may belong to several)",
    )
    op.create_index(op.f("ix_backfill_ids_queue_id"), "backfill_ids", ["queue_id"], unique=False)
    op.execute(f"CREATE OR REPLACE VIEW report_sync_freshness AS {FRESHNESS_0005}")


def downgrade() -> None:
    op.drop_table("backfill_ids")
    op.drop_table("backfills")
    op.execute("DROP VIEW report_sync_freshness")
    op.execute(f"CREATE VIEW report_sync_freshness AS {FRESHNESS_0004}")
    op.drop_table("top_credential_holds")
    op.drop_column("sync_runs", "heartbeat_at")
    op.execute("UPDATE sync_runs SET status = 'failed' WHERE status = 'killed'")
    op.execute(
        "UPDATE sync_queue SET state = 'pending' WHERE state = 'not_found' "
        "AND next_attempt_at IS NOT NULL"
    )
    op.execute("UPDATE sync_queue SET next_attempt_at = now() WHERE next_attempt_at IS NULL")
    op.alter_column(
        "sync_queue",
        "next_attempt_at",
        existing_type=TZ,
        nullable=False,
        existing_server_default=sa.text("now()"),
        comment="not to be claimed before this",
    )
