"""Client pacing benchmark: achieved QPS against the simulator's cap, and bans caused.

    python bench/client.py [--qps 50] [--latency-ms 80] [--seconds 30] [--concurrency 8]

The simulator runs as a separate process with a QPS cap per app key (a strict sliding second) and
latency. The client asks for batches of ids for ``--seconds`` seconds. Targets: achieved / cap
>= 0.95 and 0 bans.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path

sys.path.pop(0)  # bench/ itself: bench/queue.py must not shadow the standard library's queue
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._sim import counters, simulator
from etl.settings import load_settings
from etl.simulator import data
from etl.top import apis
from etl.top.client import TopClient


async def run(
    url: str, qps: float, seconds: float, concurrency: int, batch: int
) -> dict[str, float]:
    s = load_settings(
        {"top_url": url, "top_qps": str(qps), "concurrency": str(concurrency)},
        env={"ETL_CONFIG": ""},
    )
    next_id = data.FIRST_DEMO_BIZ_ID
    orders = 0
    async with TopClient(s) as client:
        deadline = time.monotonic() + seconds
        started = time.monotonic()

        async def worker() -> None:
            nonlocal next_id, orders
            while time.monotonic() < deadline:
                ids = [str(next_id + i) for i in range(batch)]
                next_id += batch
                got = await apis.wdk_order_get(client, ids, "biz", batch_size=batch)
                orders += len(got.orders)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
        return {
            "calls": client.stats.calls,
            "elapsed": elapsed,
            "orders": orders,
            "bans": client.stats.bans,
            "retries": client.stats.retries,
        }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--qps", type=float, default=50)
    p.add_argument("--latency-ms", type=float, default=80)
    p.add_argument("--seconds", type=float, default=30)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--batch-size", type=int, default=20)
    a = p.parse_args()
    with simulator(
        "--qps", str(a.qps), "--latency-ms", str(a.latency_ms), "--jitter-ms", "20"
    ) as url:
        r = asyncio.run(run(url, a.qps, a.seconds, a.concurrency, a.batch_size))
        sim = counters(url)
    achieved = r["calls"] / r["elapsed"]
    print(
        f"client pacing: cap {a.qps:g} QPS, latency {a.latency_ms:g} ms, {a.seconds:g} s, "
        f"concurrency {a.concurrency}, batch {a.batch_size}"
    )
    print(f"  calls {r['calls']:.0f} in {r['elapsed']:.1f} s -> achieved {achieved:.2f} QPS")
    print(f"  achieved / cap       {achieved / a.qps:.3f}   (target >= 0.95)")
    print(f"  bans caused          {sim['bans_started']}   (target 0); client saw {r['bans']:.0f}")
    print(f"  orders fetched       {r['orders']:.0f} ({r['orders'] / r['elapsed']:.0f}/s)")


if __name__ == "__main__":
    main()
