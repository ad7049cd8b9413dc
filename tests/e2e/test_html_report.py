"""The HTML report as a person sees it: written by real `etl` processes from synced orders, opened
in a real headless browser (Debian's chromium), every chart drawn, totals equal to the views."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import psycopg
import pytest

from etl.simulator import data
from etl.simulator.server import SimulatorConfig, SimulatorThread
from tests.helpers import etl_cmd, etl_env

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_browser = pytest.mark.skipif(
    CHROMIUM is None,
    reason="needs a headless browser: apt-get install chromium fonts-noto-cjk (Debian)",
)


def _browser(*args: str) -> subprocess.CompletedProcess[str]:
    assert CHROMIUM is not None
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture
def synced(db_url: str, tmp_path: Path) -> dict[str, str]:
    """A database filled the way a user fills it: ids queued, `etl sync` against the simulator."""
    with SimulatorThread(SimulatorConfig(missing_rate=0.05)) as sim:
        env = etl_env(db_url, sim.url, top_qps=500)
        ids = tmp_path / "ids.txt"
        ids.write_text("\n".join(str(data.FIRST_DEMO_BIZ_ID + i) for i in range(300)) + "\n")
        omni = tmp_path / "omni.csv"
        omni.write_text(
            "\n".join(f"3031798632,{data.omni_order_id(i)},OUT{i:05d}" for i in range(12)) + "\n"
        )
        for args in (("--file", str(ids)), ("--api", "omni", "--file", str(omni))):
            subprocess.run(etl_cmd("enqueue", *args), env=env, check=True, timeout=60)
        subprocess.run(etl_cmd("sync"), env=env, check=True, timeout=120, capture_output=True)
    return env


def _view_sum(url: str, sql: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0] or 0)


def _attr(dom: str, report: str, name: str) -> int:
    section = dom.split(f'data-report="{report}"', 1)[1].split("</section>", 1)[0]
    m = re.search(rf'class="totals"[^>]*data-{name}="(-?\d+)"', section)
    assert m, f"{report}: no {name} on the page"
    return int(m.group(1))


@needs_browser
def test_the_full_report_renders_every_chart_and_agrees_with_the_views(
    db_url: str, synced: dict[str, str], tmp_path: Path
) -> None:
    out = tmp_path / "report.html"
    made = subprocess.run(
        etl_cmd("report", "--all", "--format", "html", "-o", str(out)),
        env=synced,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert made.returncode == 0, made.stderr
    html = out.read_text(encoding="utf-8")
    assert "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    assert "https://" not in html  # self-contained: nothing to fetch
    assert len(html.encode()) < 400_000  # small enough to mail

    dom = _browser("--virtual-time-budget=5000", "--dump-dom", out.as_uri()).stdout
    charts = re.findall(r"<svg [^>]*class=\"chart\"[^>]*>", dom)
    assert len(charts) == 8  # daily sales has two; one for each other report
    for tag in charts:
        assert 'data-rendered="yes"' in tag, tag  # laid out by the browser, not empty
    marks = [int(m) for m in re.findall(r'data-marks="(\d+)"', dom)]
    assert len(marks) == 8
    assert all(n > 0 for n in marks[:-2])  # no message, no problem: nothing to draw

    # The totals on the page are the views' own sums, to the fen.
    assert _attr(dom, "daily-sales", "net-fen") == _view_sum(
        db_url, "SELECT sum(net_fen) FROM report_daily_sales"
    )
    assert _attr(dom, "daily-sales", "refunded-fen") == _view_sum(
        db_url, "SELECT sum(refunded_fen) FROM report_daily_sales"
    )
    assert _attr(dom, "pay-channel-mix", "amount-fen") == _view_sum(
        db_url, "SELECT sum(amount_fen) FROM report_pay_channel_mix"
    )
    assert _attr(dom, "item-sales", "amount-fen") == _view_sum(
        db_url, "SELECT sum(amount_fen) FROM report_item_sales"
    )
    assert _attr(dom, "omni-guides", "total-fee") == _view_sum(
        db_url, "SELECT sum(total_fee) FROM report_omni_guides"
    )
    # Chinese pay-type and guide names come through as text.
    assert "支付宝" in dom
    assert "导购" in dom

    shot = tmp_path / "report.png"
    _browser("--window-size=940,3000", f"--screenshot={shot}", out.as_uri())
    assert shot.stat().st_size > 50_000  # a page with charts, not a blank one


def test_html_options_are_checked(db_url: str, synced: dict[str, str], tmp_path: Path) -> None:
    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            etl_cmd("report", *args), env=synced, capture_output=True, text=True, check=False
        )

    assert report("--all", "daily-sales", "--format", "html").returncode == 2
    assert (
        report(
            "--all", "--format", "html", "--since", "2024-02-01", "--until", "2024-01-01"
        ).returncode
        == 2
    )
    one = report("daily-sales", "--format", "html", "--since", "2024-01-01")
    assert one.returncode == 0
    assert "since 2024-01-01" in one.stdout
    assert one.stdout.count('class="chart"') == 2
