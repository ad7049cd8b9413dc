"""Small, dependency-free SVG charts for the HTML report (pure: data in, markup out).

Why not a charting library: the report must be one file that opens with no network and is small
enough to mail. Inline SVG written here is a few KB per chart, needs no script to render, keeps
its text as text (Chinese store, item and pay-type names are drawn by the viewer's own fonts, and
can be searched and copied), and every mark carries a ``<title>`` with its exact figure. The three
shapes the reports need (stacked / grouped columns over days, lines, horizontal bars) are ~200
lines; a library would add tens of MB (matplotlib) or a JavaScript runtime (Vega) to the install.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from html import escape

PALETTE = (
    "#4e79a7",
    "#f28e2b",
    "#59a14f",
    "#e15759",
    "#76b7b2",
    "#edc948",
    "#b07aa1",
    "#ff9da7",
    "#9c755f",
    "#bab0ac",
)
WIDTH = 860
LEFT, RIGHT, TOP, BOTTOM = 72, 16, 40, 64  # plot margins, px (the caption sits in TOP)
LEGEND_ROW = 20


@dataclass(frozen=True)
class Series:
    name: str
    values: Sequence[float]
    color: str | None = None


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round axis ticks covering [low, high] (0 always included)."""
    low, high = min(low, 0.0), max(high, 0.0)
    if high == low:
        high = low + 1
    raw = (high - low) / count
    magnitude = 10 ** math.floor(math.log10(raw))
    step = next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)
    start = math.floor(low / step) * step
    ticks = []
    value = start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 10))
        value += step
    if ticks[-1] < high:
        ticks.append(ticks[-1] + step)
    return ticks


def fmt(value: float) -> str:
    """A figure for an axis or a label: thousands separated, at most 2 decimals."""
    if abs(value - round(value)) < 1e-9:
        return f"{round(value):,}"
    return f"{value:,.2f}"


def _frame(height: int, body: list[str], label: str) -> str:
    caption = (
        f'<text x="4" y="16" font-size="14" font-weight="600">{escape(label)}</text>'
        if label
        else ""
    )
    return (
        f'<svg class="chart" role="img" aria-label="{escape(label)}" '
        f'xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {WIDTH} {height}" '
        f'width="{WIDTH}" height="{height}">' + caption + "".join(body) + "</svg>"
    )


def _legend(series: Sequence[Series], y: float) -> list[str]:
    out, x = [], LEFT
    for i, s in enumerate(series):
        color = s.color or PALETTE[i % len(PALETTE)]
        width = 24 + 7 * len(s.name) + 16 * sum(1 for ch in s.name if ord(ch) > 0x2E80)
        if x + width > WIDTH - RIGHT:
            x, y = LEFT, y + LEGEND_ROW
        out.append(
            f'<rect class="legend" x="{x}" y="{y - 10}" width="12" height="12" fill="{color}"/>'
            f'<text x="{x + 16}" y="{y}" font-size="12">{escape(s.name)}</text>'
        )
        x += width
    return out


def _legend_rows(series: Sequence[Series]) -> int:
    rows, x = 1, LEFT
    for s in series:
        width = 24 + 7 * len(s.name) + 16 * sum(1 for ch in s.name if ord(ch) > 0x2E80)
        if x + width > WIDTH - RIGHT:
            rows, x = rows + 1, LEFT
        x += width
    return rows


def _y_axis(ticks: list[float], y_of: object, plot_w: float, unit: str) -> list[str]:
    assert callable(y_of)
    out = []
    for t in ticks:
        y = y_of(t)
        out.append(
            f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y:.1f}" y2="{y:.1f}" '
            f'stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 6}" y="{y + 4:.1f}" font-size="11" text-anchor="end">'
            f"{fmt(t)}</text>"
        )
    out.append(f'<text x="4" y="{TOP - 10}" font-size="11" fill="#555">{escape(unit)}</text>')
    return out


def columns(
    categories: Sequence[str],
    series: Sequence[Series],
    *,
    stacked: bool = False,
    lines: Sequence[Series] = (),
    unit: str = "",
    label: str = "",
    height: int = 320,
) -> str:
    """Columns over ``categories`` (days): stacked or side by side, with optional lines over
    them (e.g. net over paid and refunded)."""
    legend_rows = _legend_rows([*series, *lines])
    total_h = height + legend_rows * LEGEND_ROW
    plot_w, plot_h = WIDTH - LEFT - RIGHT, height - TOP - BOTTOM
    n = max(1, len(categories))
    if stacked:
        tops = [sum(max(0.0, s.values[i]) for s in series) for i in range(len(categories))]
        bottoms = [sum(min(0.0, s.values[i]) for s in series) for i in range(len(categories))]
    else:
        tops = [max([0.0, *(s.values[i] for s in series)]) for i in range(len(categories))]
        bottoms = [min([0.0, *(s.values[i] for s in series)]) for i in range(len(categories))]
    for line in lines:
        tops = [max(t, v) for t, v in zip(tops, line.values, strict=True)]
        bottoms = [min(b, v) for b, v in zip(bottoms, line.values, strict=True)]
    ticks = nice_ticks(min(bottoms, default=0.0), max(tops, default=1.0))
    lo, hi = ticks[0], ticks[-1]

    def y_of(v: float) -> float:
        return TOP + plot_h * (hi - v) / (hi - lo)

    body = _y_axis(ticks, y_of, plot_w, unit)
    slot = plot_w / n
    bar_w = slot * 0.7 / (1 if stacked else max(1, len(series)))
    for i, cat in enumerate(categories):
        x0 = LEFT + slot * i + slot * 0.15
        up = down = 0.0
        for k, s in enumerate(series):
            v = float(s.values[i])
            color = s.color or PALETTE[k % len(PALETTE)]
            if stacked:
                base = up if v >= 0 else down
                y1, y2 = y_of(base), y_of(base + v)
                if v >= 0:
                    up += v
                else:
                    down += v
                x = x0
            else:
                y1, y2 = y_of(0.0), y_of(v)
                x = x0 + bar_w * k
            top, h = min(y1, y2), abs(y1 - y2)
            body.append(
                f'<rect class="mark" x="{x:.1f}" y="{top:.1f}" width="{bar_w:.1f}" '
                f'height="{max(h, 0.0):.1f}" fill="{color}"><title>{escape(cat)} · '
                f"{escape(s.name)}: {fmt(v)} {escape(unit)}</title></rect>"
            )
        if n <= 16 or i % math.ceil(n / 16) == 0:
            cx = LEFT + slot * (i + 0.5)
            body.append(
                f'<text x="{cx:.1f}" y="{TOP + plot_h + 14}" font-size="11" '
                f'text-anchor="end" transform="rotate(-35 {cx:.1f} {TOP + plot_h + 14})">'
                f"{escape(cat)}</text>"
            )
    for k, line in enumerate(lines):
        color = line.color or PALETTE[(len(series) + k) % len(PALETTE)]
        points = " ".join(
            f"{LEFT + slot * (i + 0.5):.1f},{y_of(float(v)):.1f}" for i, v in enumerate(line.values)
        )
        body.append(
            f'<polyline class="mark" points="{points}" fill="none" stroke="{color}" '
            f'stroke-width="2.5"/>'
        )
        for i, v in enumerate(line.values):
            body.append(
                f'<circle cx="{LEFT + slot * (i + 0.5):.1f}" cy="{y_of(float(v)):.1f}" r="3" '
                f'fill="{color}"><title>{escape(categories[i])} · {escape(line.name)}: '
                f"{fmt(float(v))} {escape(unit)}</title></circle>"
            )
    body.append(
        f'<line x1="{LEFT}" x2="{LEFT + plot_w}" y1="{y_of(0.0):.1f}" y2="{y_of(0.0):.1f}" '
        f'stroke="#333"/>'
    )
    body += _legend([*series, *lines], height + 6)
    return _frame(total_h, body, label)


def bars(
    labels: Sequence[str],
    values: Sequence[float],
    *,
    unit: str = "",
    label: str = "",
    notes: Sequence[str] = (),
    color: str = PALETTE[0],
) -> str:
    """Horizontal bars, one per label (top items, guides, problems by kind), with the figure
    (and an optional note such as "12.5 kg") at the end of each bar."""
    row, left = 24, 260
    height = TOP + row * max(1, len(labels)) + 12
    plot_w = WIDTH - left - 150
    top_value = max([0.0, *values]) or 1.0
    body = []
    for i, (name, value) in enumerate(zip(labels, values, strict=True)):
        y = TOP + row * i
        w = plot_w * max(0.0, float(value)) / top_value
        note = f" · {notes[i]}" if i < len(notes) and notes[i] else ""
        body.append(
            f'<text x="{left - 8}" y="{y + 15}" font-size="12" text-anchor="end">'
            f"{escape(name)}</text>"
            f'<rect class="mark" x="{left}" y="{y + 3}" width="{w:.1f}" height="{row - 8}" '
            f'fill="{color}"><title>{escape(name)}: {fmt(float(value))} {escape(unit)}'
            f"{escape(note)}</title></rect>"
            f'<text x="{left + w + 6:.1f}" y="{y + 15}" font-size="11">'
            f"{fmt(float(value))} {escape(unit)}{escape(note)}</text>"
        )
    return _frame(height, body, label)
