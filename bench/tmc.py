"""Message service (TMC) benchmark: a worker with tmc_enabled against a simulator publishing a
steady stream of order changes (both real processes).

    python bench/tmc.py [--rate 50] [--seconds 60] [--qps 20] [--ceiling-rate 1000]
                        [--ceiling-seconds 20]

1. Steady stream: ``--rate`` changes/s (plus the simulator's duplicates, out-of-order and
   other-topic messages) for ``--seconds`` at a realistic QPS cap and latency: p50 / p95 from a
   message's pub_time to the order's row committed, messages/s absorbed (confirmed) against
   messages/s published, platform calls per order loaded.
2. The ceiling: the same with no QPS cap, no latency and ``--ceiling-rate`` changes/s: the
   messages/s one worker absorbs when the platform is not the limit (absorbed / published = 1.0
   means the simulator's stream was the limit, not the worker).
"""

from __future__ import annotations

import argparse
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.pop(0)  # bench/ itself: bench/queue.py must not shadow the standard library's queue
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import psycopg

from bench._db import scratch_database
from bench._sim import counters, etl_env, simulator

WARMUP_SECONDS = 5.0  # latencies of rows loaded before this are left out (process start)


def run(rate: float, seconds: float, qps: float | None, latency_ms: float) -> dict[str, Any]:
    url = scratch_database("etl_bench_tmc")
    sim_args = ["--tmc-rate", str(rate), "--tmc-orders", "20000", "--missing-rate", "0"]
    if qps:
        sim_args += ["--qps", str(qps * 1.2)]
    if latency_ms:
        sim_args += ["--latency-ms", str(latency_ms), "--jitter-ms", str(latency_ms / 3)]
    with simulator(*sim_args) as top_url:
        env = etl_env(
            url,
            top_url,
            top_qps=qps or 10_000,
            tmc_enabled="true",
            tmc_quantity=200,
            tmc_idle_seconds=0.2,
        )
        before = counters(top_url)
        started = time.monotonic()
        worker = subprocess.Popen([sys.executable, "-m", "etl", "worker"], env=env)
        time.sleep(seconds)
        after = counters(top_url)
        elapsed = time.monotonic() - started
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY seconds), "
            "percentile_cont(0.95) WITHIN GROUP (ORDER BY seconds), count(*), "
            "count(DISTINCT key) FROM tmc_latency "
            "WHERE loaded_at > (SELECT min(loaded_at) FROM tmc_latency) "
            "+ make_interval(secs => %s)",
            (WARMUP_SECONDS,),
        ).fetchone()
        loaded = conn.execute("SELECT count(*) FROM wdk_orders").fetchone()
    assert row is not None
    assert loaded is not None
    tmc_b, tmc_a = before["tmc"], after["tmc"]
    assert isinstance(tmc_a, dict)
    assert isinstance(tmc_b, dict)
    by_method = after["by_method"]
    assert isinstance(by_method, dict)
    return {
        "elapsed": elapsed,
        "published": tmc_a["published"] - tmc_b["published"],
        "confirmed": tmc_a["confirmed"],
        "p50": row[0],
        "p95": row[1],
        "answered": row[2],
        "orders": loaded[0],
        "wdk_calls": by_method.get("alibaba.wdk.order.get", 0),
        "tmc_calls": by_method.get("taobao.tmc.messages.consume", 0)
        + by_method.get("taobao.tmc.messages.confirm", 0),
    }


def report(title: str, r: dict[str, Any]) -> None:
    absorbed = r["confirmed"] / r["elapsed"]
    published = r["published"] / r["elapsed"]
    print(title)
    print(
        f"  messages: {r['published']} published ({published:.1f}/s), {r['confirmed']} confirmed "
        f"= {absorbed:.1f}/s absorbed = {absorbed / max(published, 1e-9):.3f} x published"
    )
    if r["p50"] is not None:
        print(
            f"  message -> row: p50 {r['p50']:.2f} s, p95 {r['p95']:.2f} s over {r['answered']} "
            f"loads after a {WARMUP_SECONDS:g} s warm-up (pub_time has 1 s resolution)"
        )
    orders = max(r["orders"], 1)
    print(
        f"  calls: {r['wdk_calls']} order fetches = {r['wdk_calls'] / orders:.3f} per order "
        f"loaded ({r['orders']}), {r['tmc_calls']} consume/confirm = "
        f"{r['tmc_calls'] / max(r['confirmed'], 1):.3f} per message"
    )


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--rate", type=float, default=50)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--qps", type=float, default=20)
    p.add_argument("--latency-ms", type=float, default=60)
    p.add_argument("--ceiling-rate", type=float, default=1000)
    p.add_argument("--ceiling-seconds", type=float, default=20)
    a = p.parse_args()
    steady = run(a.rate, a.seconds, a.qps, a.latency_ms)
    report(
        f"TMC steady stream: {a.rate:g} changes/s for {a.seconds:g} s, QPS cap {a.qps:g}, "
        f"latency {a.latency_ms:g} ms",
        steady,
    )
    if a.ceiling_seconds > 0:
        ceiling = run(a.ceiling_rate, a.ceiling_seconds, None, 0)
        report(
            f"TMC ceiling: {a.ceiling_rate:g} changes/s for {a.ceiling_seconds:g} s, no QPS cap, "
            "no latency",
            ceiling,
        )


if __name__ == "__main__":
    main()
