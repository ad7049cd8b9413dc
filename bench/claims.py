"""Claim latency at any backlog: the claim statement with 10k, 1M (and, with --sizes, 10M) ids
queued, against the single-statement claim it replaced (same rows, same result), in one run.

    python bench/claims.py [--sizes 10000,1000000] [--claims 60] [--batch 80]

(Not bench/queue.py: run as a script, that name would shadow the standard library's queue.)

Each claim leases `--batch` due ids of one api (the wdk queue at bulk priority, a live id or two
in front) and is rolled back, so every claim sees the same queue. Prints p50 / p95 in ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import sqlalchemy as sa

from etl.db import engine as db_engine
from etl.db import migrate, queue
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sizes", default="10000,1000000")
    ap.add_argument("--claims", type=int, default=60)
    ap.add_argument("--batch", type=int, default=80)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp(prefix="etl-bench-queue-"))
    url = db_engine.embedded_url(data)
    migrate.upgrade(url)
    engine = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), url)
    print(f"claims of {args.batch} ids, {args.claims} each, rolled back (p50 / p95 ms)")
    print(f"{'queued':>12}  {'claim now':>16}  {'previous claim':>16}  ratio (p50)")
    for n in (int(x) for x in args.sizes.split(",")):
        fill(engine, n)
        new = timed(
            engine,
            args.claims,
            lambda c: queue.claim(c, "wdk", args.batch, 300, "bench", None),
        )
        old = timed(
            engine,
            args.claims,
            lambda c: c.execute(sa.text(OLD_CLAIM), {"limit": args.batch}).all(),
        )
        p = lambda xs, q: statistics.quantiles(xs, n=100)[q - 1]  # noqa: E731
        print(
            f"{n:>12,}  {p(new, 50):>7.1f} / {p(new, 95):>6.1f}  "
            f"{p(old, 50):>7.1f} / {p(old, 95):>6.1f}  {p(old, 50) / p(new, 50):>6.1f}x"
        )
    engine.dispose()


if __name__ == "__main__":
    main()
