"""The reporting views (created by migration 0004) and how `etl report` reads them."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from typing import Any

import orjson
import sqlalchemy as sa
from sqlalchemy.engine import Connection

from etl import chinatime


@dataclass(frozen=True)
class Report:
    view: str
    description: str
    day_column: str | None  # filtered by --since / --until
    store_column: str | None  # filtered by --store
    order_by: str

    @property
    def name(self) -> str:
        return self.view.removeprefix("report_").replace("_", "-")


REPORTS = {
    r.name: r
    for r in (
        Report(
            "report_daily_sales",
            "per store and China-time day: orders, sales and refunds, original amount, "
            "promotion / member / shared discounts, post fee, paid, refunded, net (fen, yuan)",
            "day",
            "store_id",
            "day, store_id",
        ),
        Report(
            "report_pay_channel_mix",
            "per store, day and pay_type (with its name): payments and refunds, amounts",
            "day",
            "store_id",
            "day, store_id, pay_type",
        ),
        Report(
            "report_item_sales",
            "per item code / sku and day: lines, units (standard goods), weighed quantity, "
            "original, discounts, amount, refunded",
            "day",
            None,
            "day, item_code, sku_code",
        ),
        Report(
            "report_omni_guides",
            "per shopping guide and shop (omni): orders, total fee, voucher and promotion "
            "amounts (units as the API sends them)",
            None,
            "o2o_shop_id",
            "o2o_shop_id, o2o_guide_id",
        ),
        Report(
            "report_sync_freshness",
            "per api and store: orders, last synced, last changed, lag; the queue backlog",
            None,
            "store_id",
            "api, store_id",
        ),
        Report(
            "report_tmc_freshness",
            "message service (TMC): p50 / p95 / max seconds from a message's pub_time to the "
            "order's row committed over the last hour; orders still waiting for a fetch",
            None,
            None,
            "api",
        ),
        Report(
            "report_data_quality",
            "orders whose pay channels do not add up to pay_amt, sub-orders that do not add up "
            "to original_amt, unparseable JSON blobs, unknown fields",
            None,
            "store_id",
            "check_name, order_key",
        ),
    )
}


def fetch(
    conn: Connection,
    report: Report,
    since: date | None = None,
    until: date | None = None,
    store: str | None = None,
    limit: int | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``report``, filtered (``until`` is inclusive)."""
    where: list[str] = []
    params: dict[str, Any] = {}
    if report.day_column and since:
        where.append(f"{report.day_column} >= :since")
        params["since"] = since
    if report.day_column and until:
        where.append(f"{report.day_column} <= :until")
        params["until"] = until
    if store:
        if not report.store_column:
            raise ValueError(f"report {report.name} has no store column")
        where.append(f"{report.store_column} = :store")
        params["store"] = store
    sql = f"SELECT * FROM {report.view}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {report.order_by}"
    if limit:
        sql += f" LIMIT {int(limit)}"
    result = conn.execute(sa.text(sql), params)
    return list(result.keys()), [tuple(r) for r in result.all()]


def _plain(value: Any) -> Any:
    if isinstance(value, Decimal):
        return (
            int(value)
            if value == value.to_integral_value() and "." not in str(value)
            else str(value)
        )
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(chinatime.CHINA).isoformat()  # reports speak China time
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return str(value)
    return value


def as_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """An aligned plain-text table: numbers right-aligned, nothing truncated."""
    cells = [["" if v is None else str(_plain(v)) for v in row] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [
        all(isinstance(row[i], int | float | Decimal) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ).rstrip()

    out = [line(columns), line(["-" * w for w in widths])]
    out += [line(r) for r in cells]
    out.append(f"({len(rows)} row{'s' if len(rows) != 1 else ''})")
    return "\n".join(out)


def as_csv(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow(["" if v is None else _plain(v) for v in row])
    return out.getvalue()


def as_json(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    docs = [{c: _plain(v) for c, v in zip(columns, row, strict=True)} for row in rows]
    return orjson.dumps(docs, option=orjson.OPT_INDENT_2).decode()


def render(
    conn: Connection,
    name: str,
    since: date | None = None,
    until: date | None = None,
    store: str | None = None,
    fmt: str = "table",
    limit: int | None = None,
) -> str:
    """Report ``name`` (e.g. ``daily-sales``) as an aligned table, CSV or a JSON array."""
    report = REPORTS[name]
    columns, rows = fetch(conn, report, since, until, store, limit)
    if fmt == "csv":
        return as_csv(columns, rows)
    if fmt == "json":
        return as_json(columns, rows)
    return f"{report.view}\n{as_table(columns, rows)}"
