"""Load benchmark: our upsert against the floor (plain COPY), on the same Postgres, in one run.

    python bench/load.py [--n 100000] [--batch 2000] [--changed 0.1]

Phases, each over the same N orders shaped like the simulator's (1-3 pay channels, 1-10
sub-orders), streamed batch by batch (nothing accumulates in memory):
  (a) floor: plain COPY of the normalized rows into empty tables;
  (b) our load into empty tables;
  (c) re-load of the same orders (all unchanged);
  (d) re-load with a share of orders changed (a later fetch).
Only database time is counted for (a)-(d); generating and normalizing are timed on their own.
Targets on a 2-core machine: (b) >= 0.5 x floor, (c) >= 1.5 x (b), memory flat as N grows.
"""

from __future__ import annotations

import argparse
import resource
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from bench._db import scratch_database
from etl.db import load
from etl.normalize.orders import NormalizedOrder, normalize_wdk
from etl.simulator import data

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def batches(
    n: int, size: int, epoch: int, change_rate: float, clock: list[float]
) -> Iterator[list[NormalizedOrder]]:
    fetched = T0 + timedelta(hours=epoch)
    for start in range(0, n, size):
        t = time.perf_counter()
        out = [
            normalize_wdk(
                data.wdk_order(data.FIRST_DEMO_BIZ_ID + i, 0, epoch, change_rate), fetched
            )
            for i in range(start, min(n, start + size))
        ]
        clock[0] += time.perf_counter() - t
        yield out


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def floor(conn: psycopg.Connection[object], n: int, size: int) -> float:
    prep = [0.0]
    spent = 0.0
    parent_cols = load.WDK.columns
    for batch in batches(n, size, 0, 0.0, prep):
        t = time.perf_counter()
        with conn.cursor() as cur:
            load._copy(cur, "wdk_orders", parent_cols, (o.parent for o in batch))
            for child in load.WDK.children:
                rows = (r for o in batch for r in o.children[child.table.name])
                load._copy(cur, child.table.name, child.columns, rows)
        conn.commit()
        spent += time.perf_counter() - t
    return spent


def ours(
    conn: psycopg.Connection[object], n: int, size: int, epoch: int, rate: float, prep: list[float]
) -> tuple[float, load.TableCounts]:
    spent = 0.0
    total = load.TableCounts()
    for batch in batches(n, size, epoch, rate, prep):
        t = time.perf_counter()
        result = load.load(conn, "wdk", batch)
        conn.commit()
        spent += time.perf_counter() - t
        total.add(result.orders)
    return spent, total


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--batch", type=int, default=2000)
    p.add_argument("--changed", type=float, default=0.1)
    a = p.parse_args()
    url = scratch_database("etl_bench_load")
    print(f"load benchmark: {a.n} orders, batches of {a.batch}")
    with psycopg.connect(url) as conn:
        t_floor = floor(conn, a.n, a.batch)
        rss_a = rss_mb()
        rows = conn.execute(
            "SELECT (SELECT count(*) FROM wdk_orders) + (SELECT count(*) FROM wdk_pay_channels)"
            " + (SELECT count(*) FROM wdk_sub_orders)"
        ).fetchone()
        conn.execute("TRUNCATE wdk_orders, wdk_pay_channels, wdk_sub_orders, order_archive")
        conn.commit()
        prep = [0.0]
        t_b, c_b = ours(conn, a.n, a.batch, 0, 0.0, prep)
        rss_b = rss_mb()
        t_c, c_c = ours(conn, a.n, a.batch, 0, 0.0, [0.0])
        rss_c = rss_mb()
        t_d, c_d = ours(conn, a.n, a.batch, 1, a.changed, [0.0])
        rss_d = rss_mb()
    n = a.n
    per_order = (rows[0] if rows else 0) / n
    print(f"  rows per order          {per_order:.2f}")
    print(
        f"  generate + normalize    {n / prep[0]:>9,.0f} orders/s (Python only, not counted below)"
    )
    line = "  {:<24}{:>9,.0f} orders/s   {:>5.2f} x floor   peak RSS {:>6.0f} MB   {}"
    print(line.format("(a) floor: plain COPY", n / t_floor, 1.0, rss_a, ""))
    print(line.format("(b) load, empty tables", n / t_b, t_floor / t_b, rss_b, _c(c_b)))
    print(line.format("(c) re-load, unchanged", n / t_c, t_floor / t_c, rss_c, _c(c_c)))
    print(
        line.format(f"(d) re-load, {a.changed:.0%} changed", n / t_d, t_floor / t_d, rss_d, _c(c_d))
    )
    print(
        f"  (b) / floor = {t_floor / t_b:.2f} (target >= 0.5);  "
        f"(c) / (b) = {t_b / t_c:.2f} (target >= 1.5)"
    )


def _c(c: load.TableCounts) -> str:
    return f"ins {c.inserted} upd {c.updated} same {c.unchanged} stale {c.stale}"


if __name__ == "__main__":
    main()
