"""End-to-end benchmark: a backfill of N ids against the simulator with a QPS cap and latency.

    python bench/e2e.py [--ids 50000] [--qps 50] [--batch-size 20] [--latency-ms 60]
    python bench/e2e.py --uncapped [--ids 50000] [--batch-size 50] [--repeat 5]

Runs `etl backfill` (a real process) against `etl simulate` (another process) on a scratch
database and prints orders/s next to the ceiling the cap allows (QPS x batch size).
Target: >= 0.9 of the ceiling.

With --uncapped the simulator has no QPS cap and no latency, so the platform is not the limit:
the same orders are first loaded from captured pages by `etl load` (a real process, the first-
load path of bench/load.py) into another scratch database, and the backfill's orders/s is
printed as a ratio of that figure, measured in the same run, `--repeat` times (alternating, so
a busy spell of a shared machine falls on both), with the median. Target: >= 0.8. The simulator
serializes its orders before the clock starts (`etl simulate --prerender`), so serving them
costs this machine little CPU, as the real platform would cost it none; the CPU it still uses
is printed next to the ratio. Each measured database is dropped as soon as it is counted: the
autovacuum cleaning up after one command must not run (and be billed) during the next.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.pop(0)  # bench/ itself: bench/queue.py must not shadow the standard library's queue
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import orjson
import psycopg

from bench._db import drop_database, scratch_database
from bench._sim import PIDS, counters, cpu_seconds, etl_env, simulator
from etl.simulator import data


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ids", type=int, default=50_000)
    p.add_argument("--qps", type=float, default=50)
    p.add_argument("--batch-size", type=int, default=None, help="default: 20 (50 uncapped)")
    p.add_argument("--latency-ms", type=float, default=60)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--lanes", type=int, default=None, help="default: the setting's default")
    p.add_argument("--uncapped", action="store_true", help="no QPS cap, no latency (see above)")
    p.add_argument("--repeat", type=int, default=5, help="uncapped: load + backfill pairs")
    a = p.parse_args()
    if a.uncapped:
        uncapped(a)
        return
    batch = a.batch_size or 20
    url = scratch_database("etl_bench_e2e")
    ids = [str(data.FIRST_DEMO_BIZ_ID + i) for i in range(a.ids)]
    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as fh:
        fh.write("\n".join(ids) + "\n")
        path = fh.name
    sim_args = (
        "--qps",
        str(a.qps),
        "--latency-ms",
        str(a.latency_ms),
        "--jitter-ms",
        "20",
        "--missing-rate",
        "0",
    )
    with simulator(*sim_args, referee=True) as top_url:
        env = _env(url, top_url, a.qps, a, batch)
        started = time.monotonic()
        subprocess.run(
            [sys.executable, "-m", "etl", "backfill", "--file", path],
            env=env,
            check=True,
            stdout=subprocess.DEVNULL,
        )
        elapsed = time.monotonic() - started
        sim = counters(top_url)
    os.unlink(path)
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM wdk_orders").fetchone()
        orders = row[0] if row else 0
    ceiling = a.qps * batch
    rate = orders / elapsed
    print(
        f"end-to-end backfill: {a.ids} ids, cap {a.qps:g} QPS x batch {batch} "
        f"= ceiling {ceiling:,.0f} orders/s, latency {a.latency_ms:g} ms"
    )
    print(f"  {orders} orders loaded in {elapsed:.1f} s (process start included)")
    print(f"  achieved {rate:,.0f} orders/s = {rate / ceiling:.3f} x ceiling (target >= 0.9)")
    print(f"  simulator: {sim['calls']} calls, bans caused {sim['bans_started']}")


def _env(url: str, top_url: str, qps: float, a: argparse.Namespace, batch: int) -> dict[str, str]:
    lanes = {"lanes": a.lanes} if a.lanes else {}
    return etl_env(url, top_url, top_qps=qps, batch_size=batch, concurrency=a.concurrency, **lanes)


def _count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM wdk_orders").fetchone()
    return row[0] if row else 0


def uncapped(a: argparse.Namespace) -> None:
    batch = a.batch_size or 50
    ids = [data.FIRST_DEMO_BIZ_ID + i for i in range(a.ids)]
    tmp = Path(tempfile.mkdtemp(prefix="etl-bench-e2e-"))
    pages, id_file = tmp / "pages.jsonl", tmp / "ids.txt"
    id_file.write_text("\n".join(map(str, ids)) + "\n")
    with pages.open("wb") as fh:  # what the simulator answers, captured
        for start in range(0, len(ids), batch):
            orders = [data.wdk_order(i) for i in ids[start : start + batch]]
            body = {"result": {"return_code": "SUCCESS", "orders": orders}}
            fh.write(orjson.dumps(body) + b"\n")
    cores = os.cpu_count() or 1
    print(f"end-to-end backfill, simulator uncapped: {a.ids} ids, batches of {batch}")
    ratios = []
    # The simulator serializes the orders before any clock starts: serving them then costs it
    # little CPU (the real platform costs this machine none); what it still uses is printed.
    with simulator("--missing-rate", "0", "--prerender", str(a.ids)) as top_url:
        for run in range(1, a.repeat + 1):
            load_url = scratch_database("etl_bench_e2e_load")
            env = _env(load_url, "http://127.0.0.1:9/router/rest", 10_000, a, batch)
            started = time.monotonic()
            subprocess.run(
                [sys.executable, "-m", "etl", "load", "--api", "wdk", str(pages)],
                env=env,
                check=True,
                stdout=subprocess.DEVNULL,
            )
            load_rate = _count(load_url) / (time.monotonic() - started)
            drop_database("etl_bench_e2e_load")  # its autovacuum must not run in the backfill
            url = scratch_database("etl_bench_e2e")
            env = _env(url, top_url, 10_000, a, batch)
            calls = int(str(counters(top_url)["calls"]))
            sim_cpu = cpu_seconds(PIDS[top_url])
            started = time.monotonic()
            proc = subprocess.Popen(
                [sys.executable, "-m", "etl", "backfill", "--file", str(id_file)],
                env=env,
                stdout=subprocess.PIPE,
            )
            assert proc.stdout is not None
            proc.stdout.readline()  # "backfill N: ... ids": started, the ids read and checked
            read = time.monotonic() - started
            for line in proc.stdout:  # "... all N ids queued": queued while the first were fetched
                if b"ids queued" in line:
                    break
            queued = time.monotonic() - started
            proc.stdout.read()
            if proc.wait() != 0:
                raise SystemExit(f"etl backfill failed ({proc.returncode})")
            elapsed = time.monotonic() - started
            sim_cpu = cpu_seconds(PIDS[top_url]) - sim_cpu
            calls = int(str(counters(top_url)["calls"])) - calls
            loaded = _count(url)
            drop_database("etl_bench_e2e")  # nor the backfill's in the next load
            rate = loaded / elapsed
            ratios.append(rate / load_rate)
            print(
                f"  run {run}: etl load (first load) {load_rate:,.0f} orders/s, etl backfill "
                f"{rate:,.0f} orders/s = {rate / load_rate:.2f} x (of its {elapsed:.1f} s, "
                f"{read:.1f} s to start and read the ids, all queued at {queued:.1f} s; "
                f"{calls} calls; the simulator "
                f"used {sim_cpu:.1f} s of CPU = {sim_cpu / elapsed / cores:.0%} of the machine, "
                f"{sim_cpu / max(1, loaded) * 1e6:,.0f} us an order)"
            )
    for f in (pages, id_file):
        f.unlink()
    tmp.rmdir()
    print(
        f"  median backfill / first load: {statistics.median(ratios):.2f} x (target >= 0.8; "
        f"process start included in both; not like for like: the simulator runs on the same "
        f"{cores} cores during the backfill only)"
    )


if __name__ == "__main__":
    main()
