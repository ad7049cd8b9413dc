"""the platform's message service (TMC): hints, latency, topic counts, unreadable messages

Revision ID: 0006
Revises: 0004
Create Date: 2026-11-22
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TZ = sa.DateTime(timezone=True)
NOW = sa.text("now()")

# Freshness of the message service over the last hour (p50 / p95 from pub_time to row committed)
# and what is still waiting for a fetch.
FRESHNESS_VIEW = """
    WITH last_hour AS (
        SELECT api, seconds FROM tmc_latency WHERE loaded_at >= now() - interval '1 hour'
    ), waiting AS (
        SELECT api, count(*) AS waiting, min(first_pub_time) AS oldest_waiting_pub_time
        FROM tmc_hints GROUP BY api
    ), apis AS (
        SELECT api FROM last_hour UNION SELECT api FROM waiting
    )
    SELECT a.api,
           (SELECT count(*) FROM last_hour l WHERE l.api = a.api) AS orders_loaded,
           round((SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds)
                  FROM last_hour l WHERE l.api = a.api)::numeric, 2) AS p50_seconds,
           round((SELECT percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds)
                  FROM last_hour l WHERE l.api = a.api)::numeric, 2) AS p95_seconds,
           round((SELECT max(seconds) FROM last_hour l WHERE l.api = a.api)::numeric, 2)
             AS max_seconds,
           coalesce(w.waiting, 0) AS orders_waiting,
           w.oldest_waiting_pub_time
    FROM apis a LEFT JOIN waiting w ON w.api = a.api
"""


def col(name: str, type_: sa.types.TypeEngine, comment: str, **kw: object) -> sa.Column:  # type: ignore[type-arg]
    kw.setdefault("nullable", True)
    kw.setdefault("autoincrement", False)
    return sa.Column(name, type_, comment=comment, **kw)  # type: ignore[arg-type]


def upgrade() -> None:
    op.create_table(
        "tmc_hints",
        col("api", sa.Text(), "wdk (the api the message's order is fetched with)", nullable=False),
        col("id_kind", sa.Text(), "biz (the id kind of key)", nullable=False),
        col("key", sa.Text(), "the order id the messages named (biz_order_id)", nullable=False),
        col("first_pub_time", TZ, "pub_time of the oldest message not yet loaded", nullable=False),
        col("last_pub_time", TZ, "pub_time of the newest message not yet loaded", nullable=False),
        col(
            "messages",
            sa.Integer(),
            "messages merged into this hint",
            nullable=False,
            server_default="1",
        ),
        col(
            "received_at",
            TZ,
            "when the newest of these messages was pulled",
            nullable=False,
            server_default=NOW,
        ),
        sa.PrimaryKeyConstraint("api", "id_kind", "key", name=op.f("pk_tmc_hints")),
        comment="orders TMC messages say changed, until a payload fetched after the newest "
        "message is stored (then the message-to-row latency goes to tmc_latency)",
    )
    op.create_table(
        "tmc_latency",
        col("id", sa.BigInteger(), "row id", nullable=False, autoincrement=True),
        col("api", sa.Text(), "wdk", nullable=False),
        col("key", sa.Text(), "the order id (biz_order_id)", nullable=False),
        col("pub_time", TZ, "pub_time of the oldest message the load answered", nullable=False),
        col("loaded_at", TZ, "when the order's row was written", nullable=False),
        col(
            "seconds",
            sa.Float(),
            "loaded_at - pub_time, seconds (pub_time has 1 s resolution)",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tmc_latency")),
        comment="freshness: from a TMC message's pub_time to the order's row committed",
    )
    op.create_index(op.f("ix_tmc_latency_loaded_at"), "tmc_latency", ["loaded_at"])
    op.create_table(
        "tmc_topics",
        col(
            "topic",
            sa.Text(),
            "the TMC topic, e.g. alibaba_wdkorder_StatusChange",
            nullable=False,
        ),
        col("handled", sa.Boolean(), "whether etl queues the orders it names", nullable=False),
        col("messages", sa.BigInteger(), "messages pulled (and confirmed)", nullable=False),
        col("first_seen_at", TZ, "first pulled", nullable=False, server_default=NOW),
        col("last_seen_at", TZ, "last pulled", nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("topic", name=op.f("pk_tmc_topics")),
        comment="messages pulled per TMC topic; topics etl does not handle are confirmed and "
        "counted",
    )
    op.create_table(
        "tmc_unreadable",
        col("id", sa.BigInteger(), "row id", nullable=False, autoincrement=True),
        col(
            "message_id",
            sa.BigInteger(),
            "the message id (NULL when it could not be read either)",
        ),
        col("topic", sa.Text(), "the message's topic, as received"),
        col("content", sa.Text(), "the message's content, as received"),
        col("reason", sa.Text(), "why it cannot be read", nullable=False),
        col("received_at", TZ, "when it was pulled", nullable=False, server_default=NOW),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_tmc_unreadable")),
        sa.UniqueConstraint("message_id", name=op.f("uq_tmc_unreadable_message_id")),
        comment="TMC messages whose content cannot be read: kept for inspection, and confirmed",
    )
    op.execute(f"CREATE VIEW report_tmc_freshness AS {FRESHNESS_VIEW}")
    _kind_comment("worker, sync, backfill, replay, demo or tmc")


def _kind_comment(comment: str) -> None:
    op.alter_column(
        "sync_runs", "kind", existing_type=sa.Text(), existing_nullable=False, comment=comment
    )


def downgrade() -> None:
    _kind_comment("worker, sync, backfill, replay or demo")
    op.execute("DROP VIEW IF EXISTS report_tmc_freshness")
    op.drop_table("tmc_unreadable")
    op.drop_table("tmc_topics")
    op.drop_index(op.f("ix_tmc_latency_loaded_at"), table_name="tmc_latency")
    op.drop_table("tmc_latency")
    op.drop_table("tmc_hints")
