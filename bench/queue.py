"""The queue and the tables at a year's scale, in one run on the embedded PostgreSQL:

    python bench/queue.py [--sizes 10000,1000000,10000000] [--claims 60] [--old-claims 20]
                          [--batch 80]
                          [--enqueue-lines 10000000] [--prune-rows 1000000]
                          [--prune-versions 400000] [--size-orders 100000]

1. claim latency: the claim statement with each size of queue, against the single-statement
   claim it replaced (same rows, same result). Each claim leases `--batch` due ids of one api
   (the wdk queue at bulk priority, a live id or two in front) and is rolled back, so every claim
   sees the same queue. p50 / p95 in ms.
2. enqueue: `etl enqueue --file` of a `--enqueue-lines` file as a real process: ids/s and its
   peak RSS.
3. prune: `etl.db.retention.prune` of `--prune-rows` finished queue rows, then of the superseded
   versions among `--prune-versions` archive rows (4 versions an order, 3 superseded, in monthly
   partitions that also hold current versions, so rows are deleted, not partitions dropped).
4. sizes: `--size-orders` simulator orders loaded through the real path (bench/load.py's pages,
   `etl.loading.load_files`) and queued as done; each table's and index's size, scaled to a
   million orders, and the disk a year takes at 10,000 and 100,000 orders a day.

A script named queue.py would shadow the standard library's ``queue`` module (the script's own
directory comes first on sys.path): the first lines below take that directory off the path.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.pop(0)  # bench/ itself: this file must not shadow the standard library's queue
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import argparse
import os
import resource
import statistics
import subprocess
import tempfile
import time
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy as sa

from bench._sim import etl_env
from etl.db import engine as db_engine
from etl.db import migrate, partitions, queue, retention
from etl.settings import load_settings

# The claim of the previous release: one statement over "due OR expired lease", which sorts every
# claimable row to take the first few.
OLD_CLAIM = (
    "WITH c AS (SELECT id FROM sync_queue WHERE api = 'wdk' AND ("
    "  (state IN ('pending', 'failed', 'not_found') AND next_attempt_at <= now())"
    "  OR (state = 'leased' AND leased_until < now()))"
    " ORDER BY priority, next_attempt_at, id LIMIT :limit FOR UPDATE SKIP LOCKED) "
    "UPDATE sync_queue q SET state = 'leased', leased_until = now() + interval '300 seconds', "
    "leased_by = 'bench', updated_at = now() FROM c WHERE q.id = c.id RETURNING q.id"
)


def fill(engine: sa.Engine, n: int) -> None:
    with engine.begin() as c:
        c.execute(sa.text("TRUNCATE sync_queue CASCADE"))
        c.execute(
            sa.text(
                "INSERT INTO sync_queue (api, id_kind, key, priority, next_attempt_at) "
                "SELECT 'wdk', 'biz', (500000000000000 + g)::text, 10, "
                "now() - make_interval(secs => random() * 86400) FROM generate_series(1, :n) g"
            ),
            {"n": n},
        )
        # a few retries due later and a few live ids, as in a real queue
        c.execute(
            sa.text(
                "UPDATE sync_queue SET state = 'failed', next_attempt_at = now() + interval '1 h' "
                "WHERE id % 1000 = 0"
            )
        )
        c.execute(sa.text("UPDATE sync_queue SET priority = 0 WHERE id % 100000 = 1"))
    with engine.connect() as c:
        c.execution_options(isolation_level="AUTOCOMMIT").execute(
            sa.text("VACUUM ANALYZE sync_queue")
        )


def timed(engine: sa.Engine, claims: int, fn: object) -> list[float]:
    assert callable(fn)
    out = []
    for _ in range(claims):
        with engine.connect() as c:
            started = time.perf_counter()
            got = fn(c)
            out.append((time.perf_counter() - started) * 1000)
            assert got, "a claim found nothing"
            c.rollback()
    return out


def claims(engine: sa.Engine, sizes: list[int], n_claims: int, n_old: int, batch: int) -> None:
    print(
        f"\n1. claims of {batch} ids, rolled back, p50 / p95 ms ({n_claims} claims each; "
        f"{n_old} of the previous claim, which takes seconds at 10,000,000)"
    )
    print(f"{'queued':>12}  {'claim now':>16}  {'previous claim':>16}  ratio (p50)")
    for n in sizes:
        fill(engine, n)
        new = timed(engine, n_claims, lambda c: queue.claim(c, "wdk", batch, 300, "bench", None))
        old = timed(engine, n_old, lambda c: c.execute(sa.text(OLD_CLAIM), {"limit": batch}).all())
        p = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1]  # noqa: E731
        print(
            f"{n:>12,}  {p(new, 50):>7.1f} / {p(new, 95):>6.1f}  "
            f"{p(old, 50):>7.1f} / {p(old, 95):>6.1f}  {p(old, 50) / p(new, 50):>6.1f}x"
        )


def enqueue(url: str, engine: sa.Engine, lines: int, tmp: Path) -> None:
    with engine.begin() as c:
        c.execute(sa.text("TRUNCATE sync_queue CASCADE"))
    path = tmp / "ids.txt"
    with path.open("w") as fh:
        for start in range(0, lines, 100_000):
            fh.write(
                "".join(
                    f"{600000000000000 + i}\n" for i in range(start, min(lines, start + 100_000))
                )
            )
    env = etl_env(url)
    started = time.perf_counter()
    out = subprocess.run(
        [sys.executable, "-m", "etl", "enqueue", "--file", str(path)],
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    spent = time.perf_counter() - started
    rss = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    path.unlink()
    said = out.stdout.strip().splitlines()[-1]
    print(
        f"\n2. etl enqueue --file of {lines:,} ids (a real process, start included): "
        f"{spent:,.1f} s = {lines / spent:,.0f} ids/s, peak RSS {rss:,.0f} MB ({said})"
    )


def _raw_text() -> str:
    """One simulator order's JSON text (~5.6 KB): archive rows the size of real ones."""
    import orjson

    from etl.simulator import data

    return orjson.dumps(
        data.wdk_order(data.FIRST_DEMO_BIZ_ID), option=orjson.OPT_SORT_KEYS
    ).decode()


def fill_prune(engine: sa.Engine, rows: int, versions: int) -> datetime:
    """Finished queue rows 100-130 days old; archive versions (4 an order) 440-500 days old."""
    now = datetime.now(UTC)
    start = now - timedelta(days=500)
    with engine.begin() as c:
        c.execute(sa.text("TRUNCATE sync_queue CASCADE"))
        c.execute(sa.text("TRUNCATE order_archive, wdk_orders CASCADE"))
        c.execute(
            sa.text(
                "INSERT INTO sync_queue (api, id_kind, key, state, next_attempt_at, done_at) "
                "SELECT 'wdk', 'biz', (500000000000000 + g)::text, 'done', NULL, "
                "now() - interval '100 days' - random() * interval '30 days' "
                "FROM generate_series(1, :n) g"
            ),
            {"n": rows},
        )
        month = partitions.month_start(start)
        while month < now:
            partitions.create_month(c, month)
            month = partitions.add_months(month, 1)
        orders = versions // 4
        c.execute(
            sa.text(
                "INSERT INTO order_archive (api, order_key, fetched_at, payload_hash, raw) "
                "SELECT 'wdk', (500000000000000 + o)::text, "
                "CAST(:start AS timestamptz) + make_interval(days => o % 60, hours => v), "
                "md5(o || '-' || v), :raw "
                "FROM generate_series(1, :orders) o, generate_series(0, 3) v ORDER BY o % 60, v, o"
            ),
            {"start": start, "orders": orders, "raw": _raw_text()},
        )
        c.execute(
            sa.text(
                "INSERT INTO wdk_orders (biz_order_id, payload_hash, fetched_at) "
                "SELECT 500000000000000 + o, md5(o || '-3'), "
                "CAST(:start AS timestamptz) + make_interval(days => o % 60, hours => 3) "
                "FROM generate_series(1, :orders) o"
            ),
            {"start": start, "orders": orders},
        )
    with engine.connect() as c:
        c.execution_options(isolation_level="AUTOCOMMIT").execute(sa.text("VACUUM ANALYZE"))
    return now


def prune_rate(engine: sa.Engine, rows: int, versions: int) -> None:
    fill_prune(engine, rows, versions)
    print(f"\n3. prune (batches of {retention.BATCH:,}, each its own transaction)")
    for label, keep, total in (
        ("sync_queue finished rows", retention.Keep(90, 0, 0), rows),
        ("order_archive superseded versions", retention.Keep(0, 400, 0), versions * 3 // 4),
    ):
        started = time.perf_counter()
        report = retention.prune(engine, keep)
        spent = time.perf_counter() - started
        gone = report.queue + report.archive
        assert gone == total, (label, gone, total)
        print(f"   {label:<36} {gone:>10,} in {spent:>6.1f} s = {gone / spent:>9,.0f} rows/s")


SIZE_TABLES = (
    "wdk_orders",
    "wdk_pay_channels",
    "wdk_sub_orders",
    "order_archive",
    "sync_queue",
)


def _sizes(conn: psycopg.Connection[object]) -> list[tuple[str, str, int, int]]:
    """(table, index or '' for the heap + TOAST, bytes, rows) of the tables above."""
    out = []
    for table in SIZE_TABLES:
        rows = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
        n = int(rows[0]) if rows else 0
        parts = [
            r[0]
            for r in conn.execute(
                "SELECT inhrelid::regclass::text FROM pg_inherits WHERE inhparent = %s::regclass",
                (table,),
            )
        ] or [table]
        heap = sum(
            int(conn.execute("SELECT pg_table_size(%s::regclass)", (p,)).fetchone()[0])  # type: ignore[index]
            for p in parts
        )
        out.append((table, "", heap, n))
        for (index,) in conn.execute(
            "SELECT indexrelid::regclass::text FROM pg_index WHERE indrelid = %s::regclass",
            (table,),
        ).fetchall():
            size = conn.execute(
                "SELECT coalesce(sum(pg_relation_size(i.indexrelid)), 0) FROM pg_index i "
                "WHERE i.indexrelid = %s::regclass OR i.indexrelid IN "
                "(SELECT inhrelid FROM pg_inherits WHERE inhparent = %s::regclass)",
                (index, index),
            ).fetchone()
            out.append((table, index, int(size[0]) if size else 0, n))
    return out


def sizes(url: str, engine: sa.Engine, n: int, tmp: Path) -> None:
    from bench.load import T0, write_pages
    from etl import loading
    from etl.normalize.pool import Normalizer

    with engine.begin() as c:
        c.execute(sa.text("TRUNCATE sync_queue CASCADE"))
        c.execute(sa.text("TRUNCATE order_archive, wdk_orders CASCADE"))
    pages = tmp / "pages.jsonl"
    write_pages(pages, n, 0)
    with psycopg.connect(url) as conn, Normalizer(2) as normalizer:
        loading.load_files(conn, "wdk", [str(pages)], normalizer, T0)
        conn.execute(
            "INSERT INTO sync_queue (api, id_kind, key, state, next_attempt_at, done_at) "
            "SELECT 'wdk', 'biz', biz_order_id::text, 'done', NULL, now() FROM wdk_orders"
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE")
        measured = _sizes(conn)  # type: ignore[arg-type]
    pages.unlink()
    scale = 1_000_000 / n
    print(f"\n4. sizes: {n:,} orders loaded through the real path, scaled to 1,000,000 orders")
    print(f"   {'table / index':<52} {'MB per 1M orders':>16} {'bytes a row':>12}")
    per_order: dict[str, float] = {}
    for table, index, size, rows in measured:
        name = f"  {index}" if index else table
        per_row = size / rows if rows else 0
        print(f"   {name:<52} {size * scale / 1e6:>16,.0f} {per_row:>12,.0f}")
        per_order[table] = per_order.get(table, 0) + size / n
    orders = sum(per_order[t] for t in SIZE_TABLES[:3])
    archive = per_order["order_archive"]
    queue_row = per_order["sync_queue"]
    print(
        f"   per order: order tables {orders:,.0f} B, a version in order_archive {archive:,.0f} B, "
        f"a queue row {queue_row:,.0f} B"
    )
    print("   a year's disk (order tables + every version kept + 90 days of queue rows):")
    for daily in (10_000, 100_000):
        for versions in (1, 3):
            year = daily * 365 * (orders + versions * archive) + daily * 90 * queue_row
            print(
                f"     {daily:>7,} orders/day, {versions} version(s) each: {year / 1e9:>7,.1f} GB"
            )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--claims", type=int, default=60)
    ap.add_argument("--old-claims", type=int, default=20)
    ap.add_argument("--batch", type=int, default=80)
    ap.add_argument("--enqueue-lines", type=int, default=1_000_000)
    ap.add_argument("--prune-rows", type=int, default=1_000_000)
    ap.add_argument("--prune-versions", type=int, default=400_000)
    ap.add_argument("--size-orders", type=int, default=100_000)
    ap.add_argument("--skip", default="", help="comma-separated: claims,enqueue,prune,sizes")
    args = ap.parse_args()
    skip = set(args.skip.split(","))
    tmp = Path(tempfile.mkdtemp(prefix="etl-bench-queue-"))
    url = db_engine.embedded_url(tmp / "data")
    migrate.upgrade(url)
    engine = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), url)
    print(f"queue benchmark: embedded PostgreSQL in {tmp}, {os.cpu_count()} cores")
    if "claims" not in skip:
        sizes_ = [int(x) for x in args.sizes.split(",")]
        claims(engine, sizes_, args.claims, args.old_claims, args.batch)
    if "enqueue" not in skip:
        enqueue(url, engine, args.enqueue_lines, tmp)
    if "prune" not in skip:
        prune_rate(engine, args.prune_rows, args.prune_versions)
    if "sizes" not in skip:
        sizes(url, engine, args.size_orders, tmp)
    engine.dispose()


if __name__ == "__main__":
    main()
