"""What `etl report` prints: tables aligned by display width, one JSON type per column, and
options that do not apply refused."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import orjson
import pytest

from etl import reports
from etl.reports import display_width


def test_display_width_counts_cjk_as_two_columns() -> None:
    assert display_width("cash") == 4
    assert display_width("现金") == 4
    assert display_width("支付宝当面付") == 12
    assert display_width("ＡＢ") == 4  # full-width Latin
    assert display_width("e\u0301") == 1  # a combining accent takes no column


def test_table_columns_line_up_with_chinese_text() -> None:
    rows = [
        (0, "付款码支付", "payment code", 12),
        (4, "现金(pos)", "cash (POS)", 3),
        (11, "支付宝", "Alipay", 1024),
    ]
    text = reports.as_table(["pay_type", "name_zh", "name_en", "payments"], rows)
    lines = text.splitlines()[:-1]  # without the "(3 rows)" footer
    # Every line (header, rule, rows) ends at the same terminal column: the last column is
    # numeric, right-aligned.
    assert len({display_width(line) for line in lines}) == 1, text
    # And the third column starts at the same terminal column on every line.
    starts = {
        display_width(line[: line.index(word)])
        for line, word in zip(lines[2:], ("payment", "cash", "Alipay"), strict=True)
    }
    assert starts == {display_width(lines[0][: lines[0].index("name_en")])}


def test_json_gives_each_column_one_type() -> None:
    columns = ["orders", "units", "paid_yuan", "day"]
    rows = [
        (2, Decimal("3"), Decimal("12.00"), date(2024, 1, 1)),
        (1, Decimal("0.75"), Decimal("1E+2"), date(2024, 1, 2)),
        (None, None, None, None),
    ]
    docs = orjson.loads(reports.as_json(columns, rows))
    for column in columns:
        kinds = {type(d[column]).__name__ for d in docs if d[column] is not None}
        assert len(kinds) == 1, (column, kinds)
    assert [d["orders"] for d in docs] == [2, 1, None]
    assert [d["units"] for d in docs] == ["3", "0.75", None]  # decimals always strings
    assert docs[1]["paid_yuan"] == "100"  # never exponent notation


@pytest.mark.parametrize(
    ("name", "options", "problem"),
    [
        (
            "sync-freshness",
            {"since": date(2024, 1, 1)},
            "--since does not apply to report sync-freshness",
        ),
        (
            "data-quality",
            {"until": date(2024, 1, 1)},
            "--until does not apply to report data-quality",
        ),
        ("item-sales", {"store": "S1"}, "--store does not apply to report item-sales"),
        (
            "daily-sales",
            {"since": date(2024, 2, 1), "until": date(2024, 1, 1)},
            "--since 2024-02-01 is after --until 2024-01-01",
        ),
        ("daily-sales", {"limit": 0}, "--limit must be at least 1"),
        ("daily-sales", {"limit": -5}, "--limit must be at least 1"),
    ],
)
def test_options_that_do_not_apply_are_refused(
    name: str, options: dict[str, object], problem: str
) -> None:
    with pytest.raises(ValueError, match="^" + problem.replace("+", r"\+")):
        reports.check_options(reports.REPORTS[name], **options)  # type: ignore[arg-type]


def test_options_that_apply_are_accepted() -> None:
    reports.check_options(
        reports.REPORTS["daily-sales"], date(2024, 1, 1), date(2024, 1, 1), "S1", 1
    )
    reports.check_options(reports.REPORTS["sync-freshness"], store="S1", limit=10)
