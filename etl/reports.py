"""The reporting views (created by migration 0004) and how `etl report` reads them."""

from __future__ import annotations

import csv
import io
import unicodedata
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


def _having(attribute: str) -> str:
    return ", ".join(r.name for r in REPORTS.values() if getattr(r, attribute))


def check_options(
    report: Report,
    since: date | None = None,
    until: date | None = None,
    store: str | None = None,
    limit: int | None = None,
) -> None:
    """ValueError naming the option when one does not apply to ``report`` or cannot be met:
    an ignored filter would print a report the user did not ask for."""
    if (since or until) and not report.day_column:
        option = "--since" if since else "--until"
        raise ValueError(
            f"{option} does not apply to report {report.name} (it has no day); "
            f"reports with days: {_having('day_column')}"
        )
    if store and not report.store_column:
        raise ValueError(
            f"--store does not apply to report {report.name} (it has no store); "
            f"reports with stores: {_having('store_column')}"
        )
    if since and until and since > until:
        raise ValueError(f"--since {since} is after --until {until}")
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1 (got {limit})")


def fetch(
    conn: Connection,
    report: Report,
    since: date | None = None,
    until: date | None = None,
    store: str | None = None,
    limit: int | None = None,
) -> tuple[list[str], list[tuple[Any, ...]]]:
    """Column names and rows of ``report``, filtered (``until`` is inclusive)."""
    check_options(report, since, until, store, limit)
    where: list[str] = []
    params: dict[str, Any] = {}
    if report.day_column and since:
        where.append(f"{report.day_column} >= :since")
        params["since"] = since
    if report.day_column and until:
        where.append(f"{report.day_column} <= :until")
        params["until"] = until
    if store and report.store_column:
        where.append(f"{report.store_column} = :store")
        params["store"] = store
    sql = f"SELECT * FROM {report.view}"
    if where:
        sql += " WHERE " + " AND ".join(where)
    sql += f" ORDER BY {report.order_by}"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    result = conn.execute(sa.text(sql), params)
    return list(result.keys()), [tuple(r) for r in result.all()]


def _plain(value: Any) -> Any:
    # Decimals are always strings (exact, and one JSON type per column: a numeric column would
    # otherwise mix 3 and "2.50"); integer columns stay numbers.
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime) and value.tzinfo is not None:
        return value.astimezone(chinatime.CHINA).isoformat()  # reports speak China time
    if isinstance(value, datetime | date):
        return value.isoformat()
    if hasattr(value, "total_seconds"):
        return str(value)
    return value


def display_width(text: str) -> int:
    """Columns ``text`` takes on a terminal: East Asian wide and full-width characters (CJK)
    take two, combining marks none."""
    return sum(_char_width(ch) for ch in text)


def _char_width(ch: str) -> int:
    if unicodedata.combining(ch):
        return 0
    return 2 if unicodedata.east_asian_width(ch) in ("W", "F") else 1


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def as_table(columns: list[str], rows: list[tuple[Any, ...]]) -> str:
    """An aligned plain-text table: numbers right-aligned, nothing truncated, aligned by display
    width (a Chinese character takes two columns)."""
    cells = [["" if v is None else str(_plain(v)) for v in row] for row in rows]
    widths = [
        max([display_width(c)] + [display_width(r[i]) for r in cells])
        for i, c in enumerate(columns)
    ]
    numeric = [
        all(isinstance(row[i], int | float | Decimal) or row[i] is None for row in rows)
        for i in range(len(columns))
    ]

    def line(values: list[str]) -> str:
        return "  ".join(
            _pad(v, w, num) for v, w, num in zip(values, widths, numeric, strict=True)
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
