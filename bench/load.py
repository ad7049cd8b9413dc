"""Load benchmark: raw response pages → committed rows, end to end, against floors, in one run.

    python bench/load.py [--n 100000] [--changed 0.1] [--processes 1] [--skip-floors]

The input is what `etl load` and the platform client hand over: response bodies of 50
simulator-shaped orders each (1-3 pay channels, 1-10 sub-orders; half of the pages in the
default JSON shape, half simplified), one per line in a temporary file. Each phase runs the real
path (`etl.loading.load_files`: read → digest + hash → stored-hash lookup → normalize + encode in
the process pool → COPY / upsert → commit), timed wall clock from the first byte read to the
last commit:

  (b) first load into empty tables;
  (c) re-sync, every order unchanged (fetched later);
  (d) re-sync with a share of orders changed;
  (e) `etl replay` (pipeline.replay: every order rebuilt from its stored raw JSON).

Floors (server-side COPY of rows already normalized and encoded; only the COPY is timed):
  (a1) the order and child rows only — writes LESS than a load (no raw JSON, no archive);
  (a2) the same plus each order's raw JSON into order_archive — writes what a first load writes.
Each phase prints the WAL it wrote; peak RSS is the main process's and the largest worker's.
"""

from __future__ import annotations

import argparse
import copy
import os
import resource
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

sys.path.pop(0)  # bench/ itself: bench/queue.py must not shadow the standard library's queue
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import psycopg

from bench._db import scratch_database
from etl import loading, pipeline
from etl.db import engine as db_engine
from etl.db import load
from etl.normalize.pool import Normalizer, digest_lines, encode_orders
from etl.settings import load_settings
from etl.simulator import data

T0 = datetime(2026, 1, 1, tzinfo=UTC)
PAGE = 50
BASES = 1000  # distinct simulator orders the generator varies (data.wdk_order is slow)
SUB_BASE = 7_000_000_000_000_000


def _variant(base: dict[str, Any], i: int, changed: bool) -> dict[str, Any]:
    """Order number ``i``: a base order with its own ids (and a new status if ``changed``)."""
    order = copy.deepcopy(base)
    biz = data.FIRST_DEMO_BIZ_ID + i
    order["biz_order_id"] = biz
    order["tb_biz_order_id"] = data.TB_BASE + biz
    order["out_order_id"] = f"ele{biz}"
    for channel in order.get("pay_channels") or []:
        channel["biz_order_id"] = biz
    for seq, sub in enumerate(order.get("sub_orders") or []):
        sub["biz_order_id"] = SUB_BASE + i * 16 + seq
        sub["parent_id"] = biz
    if changed:
        order["order_status"] = "SUCCESS" if order.get("order_status") != "SUCCESS" else "CLOSED"
    return order


def write_pages(path: Path, n: int, changed_every: int) -> None:
    """``n`` orders as response bodies, one a line; every ``changed_every``-th order changed."""
    bases = [data.wdk_order(data.FIRST_DEMO_BIZ_ID + i) for i in range(BASES)]
    with path.open("wb") as fh:
        for start in range(0, n, PAGE):
            orders = [
                _variant(bases[i % BASES], i, bool(changed_every) and i % changed_every == 0)
                for i in range(start, min(n, start + PAGE))
            ]
            if (start // PAGE) % 2:
                body: dict[str, Any] = {
                    "alibaba_wdk_order_get_response": {
                        "result": {"return_code": "SUCCESS", "orders": {"order": orders}},
                        "request_id": "bench",
                    }
                }
            else:
                body = {"result": {"return_code": "SUCCESS", "orders": orders}}
            fh.write(orjson.dumps(body) + b"\n")


def rss_mb() -> tuple[float, float]:
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    children = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    return own, children  # children: only processes this one waited for (not the pool's)


def wal(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT pg_current_wal_insert_lsn() - '0/0'::pg_lsn").fetchone()
    conn.commit()
    assert row is not None
    return int(row[0])


def floor(conn: psycopg.Connection[Any], path: Path, with_raw: bool) -> tuple[float, int]:
    """Seconds spent in COPY of pre-encoded rows (encoding untimed), and WAL written."""
    spent = 0.0
    before = wal(conn)
    sizes = [0]
    for batch in loading.read_batches([str(path)], sizes):
        orders = encode_orders(digest_lines("wdk", batch, T0).orders)
        t = time.perf_counter()
        with conn.cursor() as cur:
            tables = [(load.WDK.table.name, load.WDK.columns)]
            tables += [(c.table.name, c.columns) for c in load.WDK.children]
            if with_raw:
                tables.append(("order_archive", load.ARCHIVE_COLUMNS))
            for name, cols in tables:
                load._copy_lines(cur, name, cols, load._rows(orders, name))
        conn.commit()
        spent += time.perf_counter() - t
    return spent, wal(conn) - before


WORKER_PEAK = [0.0]


def _hwm_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return 0.0


def through(conn: psycopg.Connection[Any], path: Path, at: datetime, processes: int) -> Any:
    before = wal(conn)
    t = time.perf_counter()
    with Normalizer(processes) as normalizer, psycopg.connect(conn.info.dsn) as lookup:
        totals = loading.load_files(conn, "wdk", [str(path)], normalizer, at, lookup_conn=lookup)
        peaks = [_hwm_mb(pid) for pid in normalizer.worker_pids()]
        WORKER_PEAK[0] = max([WORKER_PEAK[0], *peaks])
    return time.perf_counter() - t, wal(conn) - before, totals


def truncate(conn: psycopg.Connection[Any]) -> None:
    conn.execute("TRUNCATE wdk_orders, wdk_pay_channels, wdk_sub_orders, order_archive")
    conn.commit()
    conn.execute("CHECKPOINT")
    conn.commit()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--n", type=int, default=100_000)
    p.add_argument("--changed", type=float, default=0.1)
    p.add_argument("--processes", type=int, default=2, help="normalize_processes")
    p.add_argument("--skip-floors", action="store_true")
    p.add_argument(
        "--first-load-only",
        action="store_true",
        help="only (b), e.g. to see peak RSS with 1,000,000 orders",
    )
    a = p.parse_args()
    n = a.n
    tmp = Path(tempfile.mkdtemp(prefix="etl-bench-load-"))
    first, changed = tmp / "first.jsonl", tmp / "changed.jsonl"
    t = time.perf_counter()
    write_pages(first, n, 0)
    if a.first_load_only:
        url = scratch_database("etl_bench_load")
        with psycopg.connect(url) as conn:
            spent, w, _ = through(conn, first, T0, a.processes)
        first.unlink()
        tmp.rmdir()
        own, _ = rss_mb()
        print(
            f"  (b) first load of {n:,} orders: {n / spent:,.0f} orders/s, WAL {w / 1e6:,.0f} MB; "
            f"peak RSS main {own:,.0f} MB, largest normalizer process {WORKER_PEAK[0]:,.0f} MB"
        )
        return
    write_pages(changed, n, round(1 / a.changed) if a.changed else 0)
    print(
        f"load benchmark: {n:,} orders in pages of {PAGE} ({first.stat().st_size / n:,.0f} "
        f"bytes/order), normalize_processes={a.processes}, {os.cpu_count()} cores "
        f"(input written in {time.perf_counter() - t:.0f} s, not counted)"
    )
    url = scratch_database("etl_bench_load")
    line = "  {:<44}{:>9,.0f} orders/s {:>7} WAL {:>7,.0f} MB  {}"
    results: dict[str, tuple[float, int]] = {}
    with psycopg.connect(url) as conn:
        rows = 0
        if not a.skip_floors:
            for key, with_raw in (("a1", False), ("a2", True)):
                spent, w = floor(conn, first, with_raw)
                results[key] = (spent, w)
                if key == "a1":
                    got = conn.execute(
                        "SELECT (SELECT count(*) FROM wdk_orders) + "
                        "(SELECT count(*) FROM wdk_pay_channels) + "
                        "(SELECT count(*) FROM wdk_sub_orders)"
                    ).fetchone()
                    rows = got[0] if got else 0
                truncate(conn)
        results["b"] = through(conn, first, T0, a.processes)[:2]
        rss_b = rss_mb()
        results["c"] = through(conn, first, T0 + timedelta(hours=1), a.processes)[:2]
        # the first reads after a bulk load set hint bits, which (data checksums on) writes a
        # full image of every page read once: the same re-sync again shows its own WAL
        results["c2"] = through(conn, first, T0 + timedelta(hours=1, minutes=30), a.processes)[:2]
        d_time, d_wal, d_totals = through(conn, changed, T0 + timedelta(hours=2), a.processes)
        results["d"] = (d_time, d_wal)
        before = wal(conn)
        engine = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), url)
        t = time.perf_counter()
        pipeline.replay(engine, ("wdk",), processes=a.processes)
        results["e"] = (time.perf_counter() - t, wal(conn) - before)
        engine.dispose()
        rss_e = rss_mb()
    for f in (first, changed):
        f.unlink()
    tmp.rmdir()
    b_time, b_wal = results["b"]
    b_rate = n / b_time

    def show(key: str, label: str, note: str = "") -> None:
        spent, w = results[key]
        ratio = f"{b_time / spent:.2f}x(b)" if key != "b" else ""
        print(line.format(label, n / spent, ratio, w / 1e6, note))

    if rows:
        print(f"  rows per order: {rows / n:.2f}")
    if "a1" in results:
        show("a1", "(a1) floor: COPY rows only", "writes LESS: no raw JSON, no archive")
        show("a2", "(a2) floor: COPY rows + raw into archive", "writes what (b) writes")
    show("b", "(b) first load, end to end", "target >= 4,000")
    show(
        "c",
        "(c) re-sync, all unchanged",
        f"target >= 15,000; WAL {results['c'][1] / b_wal:.1%} of (b) (target <= 10 %)",
    )
    show(
        "c2",
        "(c') the same re-sync again",
        f"WAL {results['c2'][1] / b_wal:.1%} of (b): (c) minus the one-off hint-bit page images",
    )
    show(
        "d",
        f"(d) re-sync, {a.changed:.0%} changed",
        f"target >= 8,000; updated {d_totals.updated:,}, normalized {d_totals.normalized:,}",
    )
    show("e", "(e) etl replay", f"target >= (b) = {b_rate:,.0f}")
    if "a2" in results:
        print(f"  (b) / (a2) like-for-like floor = {results['a2'][0] / b_time:.2f}")
    print(
        f"  peak RSS: main {rss_b[0]:,.0f} MB after (b), {rss_e[0]:,.0f} MB at the end; "
        f"largest normalizer process {WORKER_PEAK[0]:,.0f} MB (target <= 300 each)"
    )


if __name__ == "__main__":
    main()
