"""`etl report --format html`: one self-contained page per report (or all of them) — a chart, the
figures behind it, the table (fen-exact) under it, the filters used and when it was made.

Everything is inline (CSS, SVG, a five-line script that marks each chart as drawn): the file
opens with no network and is small enough to mail. Money is charted in yuan and tabled in fen.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from html import escape
from typing import Any

from sqlalchemy.engine import Connection

from etl import chinatime, reports
from etl.svgchart import Series, bars, columns, fmt

TABLE_ROWS = 100  # rows shown under a chart (the latest; the chart uses them all)
MAX_DAYS = 62  # over this many days, the charts go by week (Monday) to stay readable and small
TOP_STORES = 5
TOP_ITEMS = 15


@dataclass
class Section:
    """What one report contributes to the page."""

    report: reports.Report
    charts: list[str]
    totals: dict[str, int | float]  # figure name -> value, also in data-* attributes
    columns: list[str] = field(default_factory=list)
    rows: list[tuple[Any, ...]] = field(default_factory=list)


def yuan(fen: int | float | Decimal) -> float:
    return float(Decimal(int(fen)) / 100)


def yuan_text(fen: int) -> str:
    return f"{Decimal(int(fen)) / 100:,.2f}"


def bucketing(rows: list[dict[str, Any]]) -> Callable[[date], date]:
    """Day → the chart's bucket: the day itself, or its week's Monday for long spans."""
    days = {r["day"] for r in rows}
    if len(days) <= MAX_DAYS:
        return lambda d: d
    return lambda d: date.fromordinal(d.toordinal() - d.weekday())


def _buckets(rows: list[dict[str, Any]]) -> tuple[list[date], Callable[[date], date], str]:
    """The chart's buckets, the day → bucket function, and "day" or "week"."""
    of = bucketing(rows)
    days = sorted({of(r["day"]) for r in rows})
    return days, of, "week" if len({r["day"] for r in rows}) > MAX_DAYS else "day"


def daily_sales(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, int | float]]:
    days, of, per_what = _buckets(rows)
    labels = [d.isoformat() for d in days]
    net_by_store: dict[str, int] = defaultdict(int)
    for r in rows:
        net_by_store[str(r["store_id"])] += int(r["net_fen"])
    top = sorted(net_by_store, key=lambda s: -net_by_store[s])[:TOP_STORES]
    per: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    paid: dict[date, int] = defaultdict(int)
    refunded: dict[date, int] = defaultdict(int)
    for r in rows:
        store = str(r["store_id"]) if str(r["store_id"]) in top else "others"
        per[store][of(r["day"])] += int(r["net_fen"])
        paid[of(r["day"])] += int(r["paid_fen"])
        refunded[of(r["day"])] += int(r["refunded_fen"])
    stores = [*top, *(["others"] if "others" in per else [])]
    by_store = columns(
        labels,
        [Series(s, [yuan(per[s][d]) for d in days]) for s in stores],
        stacked=True,
        unit="yuan",
        label=f"net sales by {per_what} and store",
    )
    totals = columns(
        labels,
        [
            Series("sales (paid)", [yuan(paid[d]) for d in days], "#4e79a7"),
            Series("refunds", [-yuan(refunded[d]) for d in days], "#e15759"),
        ],
        lines=[Series("net", [yuan(paid[d] - refunded[d]) for d in days], "#333333")],
        unit="yuan",
        label=f"sales, refunds and net by {per_what}",
    )
    figures: dict[str, int | float] = {
        "net_fen": sum(int(r["net_fen"]) for r in rows),
        "paid_fen": sum(paid.values()),
        "refunded_fen": sum(refunded.values()),
    }
    return [by_store, totals], figures


def pay_channel_mix(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, int | float]]:
    days, of, per_what = _buckets(rows)
    amount: dict[str, dict[date, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        amount[str(r["pay_type_name"])][of(r["day"])] += int(r["amount_fen"])
    kinds = sorted(amount, key=lambda k: -sum(amount[k].values()))
    chart = columns(
        [d.isoformat() for d in days],
        [Series(k, [yuan(amount[k][d]) for d in days]) for k in kinds],
        stacked=True,
        unit="yuan",
        label=f"amount by pay type and {per_what}",
    )
    return [chart], {"amount_fen": sum(int(r["amount_fen"]) for r in rows)}


def item_sales(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, int | float]]:
    amount: dict[str, int] = defaultdict(int)
    units: dict[str, int] = defaultdict(int)
    weighed: dict[str, Decimal] = defaultdict(Decimal)
    unit_of: dict[str, str] = {}
    for r in rows:
        key = f"{r['item_code']} / {r['sku_code']}"
        amount[key] += int(r["amount_fen"])
        units[key] += int(r["units"] or 0)
        weighed[key] += Decimal(r["weighed_quantity"] or 0)
        if r["weighed_unit"]:
            unit_of[key] = str(r["weighed_unit"])
    top = sorted(amount, key=lambda k: -amount[k])[:TOP_ITEMS]
    notes = [
        f"{fmt(float(weighed[k]))} {unit_of.get(k, '')}".strip()
        if weighed[k]
        else f"{units[k]} units"
        for k in top
    ]
    chart = bars(
        top,
        [yuan(amount[k]) for k in top],
        unit="yuan",
        notes=notes,
        label=f"top {len(top)} items by amount",
    )
    return [chart], {"amount_fen": sum(amount.values())}


def omni_guides(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, int | float]]:
    labels = [
        f"{r['o2o_guide_name'] or r['o2o_guide_id']} ({r['o2o_shop_name'] or ''})" for r in rows
    ]
    chart = bars(
        labels,
        [float(r["total_fee"] or 0) for r in rows],
        unit="(API units)",
        label="total fee by shopping guide",
    )
    return [chart], {"total_fee": sum(int(r["total_fee"] or 0) for r in rows)}


def sync_freshness(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, int | float]]:
    labels = [f"{r['api']} {r['store_id']}" for r in rows]
    lags = [r["lag"].total_seconds() / 60 if r["lag"] is not None else 0.0 for r in rows]
    notes = [f"backlog {r['queue_backlog']}, dead {r['queue_dead']}" for r in rows]
    chart = bars(
        labels, lags, unit="min", notes=notes, label="minutes since the last sync, per store"
    )
    return [chart], {"orders": sum(int(r["orders"]) for r in rows)}


def tmc_freshness(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, int | float]]:
    labels, values, notes = [], [], []
    for r in rows:
        for q in ("p50", "p95"):
            labels.append(f"{r['api']} {q}")
            values.append(float(r[f"{q}_seconds"] or 0))
            notes.append(f"{r['orders_loaded']} orders, {r['orders_waiting']} waiting")
    chart = bars(
        labels or ["no message in the last hour"],
        values or [0.0],
        unit="s",
        notes=notes,
        label="message → row committed, last hour (TMC)",
    )
    return [chart], {"orders_loaded": sum(int(r["orders_loaded"] or 0) for r in rows)}


def data_quality(rows: list[dict[str, Any]]) -> tuple[list[str], dict[str, int | float]]:
    kinds: dict[str, int] = defaultdict(int)
    for r in rows:
        kinds[str(r["check_name"])] += 1
    names = sorted(kinds, key=lambda k: -kinds[k])
    chart = bars(
        names or ["no problem found"],
        [float(kinds[k]) for k in names] or [0.0],
        unit="orders",
        color="#e15759",
        label="problems by kind",
    )
    return [chart], {"problems": len(rows)}


CHARTS: dict[str, Callable[[list[dict[str, Any]]], tuple[list[str], dict[str, int | float]]]] = {
    "daily-sales": daily_sales,
    "pay-channel-mix": pay_channel_mix,
    "item-sales": item_sales,
    "omni-guides": omni_guides,
    "sync-freshness": sync_freshness,
    "tmc-freshness": tmc_freshness,
    "data-quality": data_quality,
}


def section(
    conn: Connection,
    name: str,
    since: date | None,
    until: date | None,
    store: str | None,
) -> Section:
    report = reports.REPORTS[name]
    cols, rows = reports.fetch(
        conn,
        report,
        since if report.day_column else None,
        until if report.day_column else None,
        store if report.store_column else None,
    )
    dicts = [dict(zip(cols, r, strict=True)) for r in rows]
    charts, totals = CHARTS[name](dicts)
    return Section(report, charts, totals, cols, rows)


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, datetime):
        return chinatime.display(value)
    return escape(str(reports._plain(value)))


def _table(s: Section) -> str:
    shown = s.rows[-TABLE_ROWS:] if s.report.day_column else s.rows[:TABLE_ROWS]
    head = "".join(f"<th>{escape(c)}</th>" for c in s.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f'<td class="{"num" if isinstance(v, int | float | Decimal) else ""}">{_cell(v)}</td>'
            for v in row
        )
        + "</tr>"
        for row in shown
    )
    more = (
        f'<p class="note">{"latest" if s.report.day_column else "first"} {TABLE_ROWS} of '
        f"{len(s.rows)} rows; "
        f"<code>etl report {s.report.name} --format csv</code> gives them all</p>"
        if len(s.rows) > TABLE_ROWS
        else ""
    )
    table = f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
    return f'<div class="table">{table}</div>{more}'


def _totals(s: Section) -> str:
    parts = []
    attrs = []
    for key, value in s.totals.items():
        attrs.append(f'data-{key.replace("_", "-")}="{value}"')
        if key.endswith("_fen"):
            label = key.removesuffix("_fen").replace("_", " ")
            parts.append(f"{label} <b>{yuan_text(int(value))}</b> yuan ({int(value):,} fen)")
        else:
            parts.append(f"{key.replace('_', ' ')} <b>{fmt(float(value))}</b>")
    return f'<p class="totals" {" ".join(attrs)}>Total: {"; ".join(parts)}</p>'


STYLE = """
body{font-family:"Noto Sans CJK SC","PingFang SC","Microsoft YaHei","Source Han Sans SC",
system-ui,sans-serif;margin:24px auto;max-width:900px;color:#222;}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;margin-top:36px;border-top:1px solid #ddd;
padding-top:16px} .meta,.note,.desc{color:#555;font-size:13px} .totals{font-size:14px}
svg.chart{display:block;margin:12px 0;max-width:100%;height:auto;font-family:inherit}
.table{max-height:360px;overflow:auto;border:1px solid #eee}
table{border-collapse:collapse;font-size:12px;width:100%} th,td{padding:3px 6px;
border-bottom:1px solid #eee;white-space:nowrap;text-align:left} td.num{text-align:right;
font-variant-numeric:tabular-nums} th{position:sticky;top:0;background:#fafafa}
"""

# Marks each chart as drawn by the browser (its laid-out size and its marks), so a headless
# browser test — or a curious reader — can tell a rendered chart from an empty one.
MARK_RENDERED = """
document.querySelectorAll('svg.chart').forEach(function(s){var b=s.getBBox();
s.setAttribute('data-rendered',(b.width>0&&b.height>0)?'yes':'no');
s.setAttribute('data-marks',s.querySelectorAll('.mark').length);});
"""


def page(
    sections: Sequence[Section],
    *,
    since: date | None,
    until: date | None,
    store: str | None,
    now: datetime | None = None,
) -> str:
    made = chinatime.display(now or datetime.now(chinatime.CHINA))
    filters = ", ".join(
        f"{k} {v}"
        for k, v in (("since", since), ("until", until), ("store", store))
        if v is not None
    )
    title = "etl report" if len(sections) != 1 else f"etl report — {sections[0].report.name}"
    parts = [
        "<!doctype html>",
        '<html lang="zh-CN"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width,initial-scale=1">',
        f"<title>{escape(title)}</title><style>{STYLE}</style></head><body>",
        f"<h1>{escape(title)}</h1>",
        f'<p class="meta">generated {escape(made)} (China time) · filters: '
        f"{escape(filters) or 'none'} · money in yuan in the charts, fen in the tables</p>",
    ]
    for s in sections:
        parts.append(f'<section id="{s.report.name}" data-report="{s.report.name}">')
        parts.append(f"<h2>{escape(s.report.name)} <small>({escape(s.report.view)})</small></h2>")
        parts.append(f'<p class="desc">{escape(s.report.description)}</p>')
        parts.append(_totals(s))
        parts.extend(s.charts)
        parts.append(_table(s))
        parts.append("</section>")
    parts.append(f"<script>{MARK_RENDERED}</script></body></html>")
    return "\n".join(parts)


def render(
    conn: Connection,
    names: Sequence[str],
    since: date | None = None,
    until: date | None = None,
    store: str | None = None,
) -> str:
    """The HTML page for the reports ``names`` (filters applied where a report has them)."""
    sections = [section(conn, n, since, until, store) for n in names]
    return page(sections, since=since, until=until, store=store)
