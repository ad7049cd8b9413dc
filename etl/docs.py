"""The README's data dictionary, generated from the column comments of ``etl/db/tables.py``.

python -m etl.docs > /tmp/dictionary.md   # what README.md's "Data dictionary" must contain
"""

from __future__ import annotations

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from etl.db import tables as t

API_PATHS = {
    "wdk_orders": "result.orders[].",
    "wdk_pay_channels": "result.orders[].pay_channels[].",
    "wdk_sub_orders": "result.orders[].sub_orders[].",
    "omni_orders": "result.model.",
    "omni_subpay_orders": "result.model.subpay_order_list[].",
    "omni_pay_serials": "result.model.pay_order_serial_infos[].",
}
DERIVED = {
    "seq": "(position in the list)",
    "order_biz_order_id": "result.orders[].biz_order_id (the enclosing order)",
    "user_id": "(the user_id the order was queried with)",
}
BOOKKEEPING = {
    "raw",
    "payload_hash",
    "unknown_fields",
    "first_synced_at",
    "synced_at",
    "changed_at",
    "fetched_at",
}
DOCUMENTED = (
    t.wdk_orders,
    t.wdk_pay_channels,
    t.wdk_sub_orders,
    t.omni_orders,
    t.omni_subpay_orders,
    t.omni_pay_serials,
    t.order_archive,
    t.sync_queue,
    t.sync_runs,
    t.top_bans,
    t.top_credential_holds,
    t.backfills,
    t.backfill_ids,
    t.tmc_hints,
    t.tmc_latency,
    t.tmc_topics,
    t.tmc_unreadable,
    t.top_quota_leases,
    t.top_quota_days,
)


def _type(column: sa.Column[object]) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    return str(column.type.compile(dialect=dialect)).lower()


def _unit(column: sa.Column[object]) -> str:
    comment = column.comment or ""
    if "(fen" in comment:
        return "fen"
    if "unit as received" in comment:
        return "as received"
    if isinstance(column.type, sa.DateTime):
        return "China time" if "China time" in comment else "instant"
    return ""


def _key(table: sa.Table, column: sa.Column[object]) -> str:
    parts = []
    if column.primary_key:
        parts.append("PK")
    for fk in column.foreign_keys:
        parts.append(f"FK → {fk.target_fullname}")
    return ", ".join(parts)


def _source(table: sa.Table, column: sa.Column[object]) -> str:
    name = column.name
    path = API_PATHS.get(table.name)
    if path is None or name in BOOKKEEPING:
        return "(etl)"
    if name in DERIVED:
        return DERIVED[name]
    if table.name == "wdk_pay_channels" and name == "biz_order_id":
        return DERIVED["order_biz_order_id"]
    if table.name == "omni_orders" and name.startswith("promotion_"):
        return f"result.model.promotion_info.{name}"
    field = name.removesuffix("_raw")
    return f"{path}{field}"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def dictionary() -> str:
    """Markdown: one table per database table, one row per column."""
    out = []
    for table in DOCUMENTED:
        out.append(f"#### `{table.name}` — {_escape(table.comment or '')}\n")
        out.append("| column | type | unit | key | meaning | from |")
        out.append("|---|---|---|---|---|---|")
        for column in table.columns:
            out.append(
                f"| `{column.name}` | {_type(column)} | {_unit(column)} | {_key(table, column)} "
                f"| {_escape(column.comment or '')} | {_escape(_source(table, column))} |"
            )
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(dictionary())
