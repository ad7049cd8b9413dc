"""How many ids one `etl worker` settles in a fixed time with a small and a huge backlog.

    python bench/settle.py [--sizes 40000,1000000] [--seconds 25]

For each size, a scratch database gets that many due ids at bulk priority (as a year's backfill
leaves them); then a real `etl worker` process runs against `etl simulate` (another process, no
QPS cap, no latency, every id found) for `--seconds`, and the ids it settled (done / not_found)
are counted. The platform is not the limit, so the figure is the worker's own pace: claims,
fetch, hash, normalize, load. Prints ids settled per size and the ratio of the largest backlog to
the smallest (issue 15's goal: >= 0.8).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path

sys.path.pop(0)  # bench/ itself: bench/queue.py must not shadow the standard library's queue
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from bench._db import scratch_database
from bench._sim import etl_env, simulator
from etl.simulator import data

SETTLED = "SELECT count(*) FROM sync_queue WHERE state IN ('done', 'not_found')"


def fill(url: str, n: int) -> None:
    with psycopg.connect(url) as conn:
        conn.execute(
            "INSERT INTO sync_queue (api, id_kind, key, priority, next_attempt_at) "
            "SELECT 'wdk', 'biz', (%s::bigint + g)::text, 10, "
            "now() - make_interval(secs => random() * 86400) FROM generate_series(0, %s - 1) g",
            (data.FIRST_DEMO_BIZ_ID, n),
        )
        conn.commit()
        conn.autocommit = True
        conn.execute("VACUUM ANALYZE sync_queue")


def settle(url: str, top_url: str, seconds: float) -> int:
    env = etl_env(url, top_url, top_qps=200, batch_size=50, tmc_enabled="false")
    proc = subprocess.Popen(
        [sys.executable, "-m", "etl", "worker"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        with psycopg.connect(url, autocommit=True) as conn:
            # the clock starts at the first settled id: process start and imports are not counted
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                row = conn.execute(SETTLED).fetchone()
                if row and row[0]:
                    break
                time.sleep(0.05)
            start = conn.execute(SETTLED).fetchone()
            time.sleep(seconds)
            end = conn.execute(SETTLED).fetchone()
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    assert start is not None
    assert end is not None
    return int(end[0]) - int(start[0])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="40000,1000000")
    ap.add_argument("--seconds", type=float, default=25.0)
    args = ap.parse_args()
    sizes = [int(x) for x in args.sizes.split(",")]
    got: dict[int, int] = {}
    print(f"one etl worker, {args.seconds:g} s, simulator uncapped (ids settled: done/not_found)")
    with simulator("--missing-rate", "0") as top_url:
        for n in sizes:
            url = scratch_database("etl_bench_settle")
            fill(url, n)
            got[n] = settle(url, top_url, args.seconds)
            print(f"  {n:>10,} queued: {got[n]:>7,} settled ({got[n] / args.seconds:,.0f} ids/s)")
    small, large = min(sizes), max(sizes)
    print(f"  ratio {large:,} / {small:,} queued: {got[large] / got[small]:.2f} (goal >= 0.8)")


if __name__ == "__main__":
    main()
