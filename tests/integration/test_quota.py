"""The shared quota's leases on a real Postgres: hand-over through the grace, lapsed and killed
holders, the day's call count, and what `etl status` shows."""

from __future__ import annotations

import subprocess
import sys
import time

import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl.db import quota as db_quota
from etl.top import quota
from etl.top.quota import Renewal


def renew(
    store: db_quota.PostgresLeaseStore, holder: str, demand: int, calls: int = 0, current: int = 0
) -> quota.Grant:
    return store.renew(
        Renewal(
            app_key="k",
            holder=holder,
            role="worker",
            quota=20,
            current=current,
            demand=demand,
            rate=float(calls),
            calls=calls,
            day=quota.china_day(),
        )
    )


def counted(engine: Engine) -> int:
    """Units counted by live leases: granted + given back and still in their grace."""
    with engine.begin() as c:
        return int(
            c.execute(
                sa.text(
                    "SELECT coalesce(sum(units + CASE WHEN release_until > now() THEN releasing "
                    "ELSE 0 END), 0) FROM top_quota_leases WHERE expires_at > now()"
                )
            ).scalar_one()
        )


def test_a_newcomer_gets_its_share_only_after_the_grace(engine: Engine) -> None:
    store = db_quota.PostgresLeaseStore(engine)
    assert renew(store, "h:1#a", 20).units == 20
    assert renew(store, "h:2#b", 20).units == 0  # nothing free
    assert renew(store, "h:1#a", 20).units == 10  # gives half back...
    assert renew(store, "h:2#b", 20).units == 0  # ...which stays counted during the grace
    assert counted(engine) == 20
    time.sleep(quota.RELEASE_GRACE + 0.2)
    grant = renew(store, "h:2#b", 20)
    assert (grant.units, grant.holders) == (10, 2)
    assert counted(engine) == 20


def test_many_holders_renewing_never_count_more_than_the_quota(engine: Engine) -> None:
    store = db_quota.PostgresLeaseStore(engine)
    holders = [f"h:{i}#x" for i in range(5)]
    for round_ in range(12):
        for i, h in enumerate(holders):
            renew(store, h, demand=20 if (i + round_) % 3 else 2)
            assert counted(engine) <= 20


def test_a_lapsed_lease_frees_its_units(engine: Engine) -> None:
    store = db_quota.PostgresLeaseStore(engine)
    renew(store, "other-host:1#a", 20)
    assert renew(store, "other-host:2#b", 20).units == 0
    with engine.begin() as c:  # the first holder stopped renewing 3 s ago
        c.execute(sa.text("UPDATE top_quota_leases SET expires_at = now() WHERE holder LIKE '%#a'"))
    assert renew(store, "other-host:2#b", 20).units == 20


def test_a_killed_process_on_this_host_frees_its_units_after_a_short_grace(
    engine: Engine,
) -> None:
    import socket

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # a pid that no longer runs
    store = db_quota.PostgresLeaseStore(engine)
    renew(store, f"{socket.gethostname()}:{proc.pid}#dead", 20)
    assert renew(store, "other-host:2#b", 20).units == 0  # seen dead: lapses in DEAD_GRACE
    time.sleep(quota.DEAD_GRACE + 0.2)
    assert renew(store, "other-host:2#b", 20).units == 20


def test_a_lease_taken_again_after_an_outage_keeps_only_free_units(engine: Engine) -> None:
    store = db_quota.PostgresLeaseStore(engine)
    renew(store, "h:1#a", 12)
    with engine.begin() as c:
        c.execute(sa.text("UPDATE top_quota_leases SET expires_at = now() WHERE holder = 'h:1#a'"))
    renew(store, "h:2#b", 12)
    assert renew(store, "h:1#a", 20, current=12).units == 8  # what b does not hold


def test_calls_are_counted_per_china_day_and_shown_by_status(engine: Engine) -> None:
    store = db_quota.PostgresLeaseStore(engine)
    renew(store, "h:1#a", 20, calls=5)
    grant = renew(store, "h:1#a", 20, calls=7)
    assert grant.calls_today == 12
    store.release("k", "h:1#a", 3, quota.china_day())
    with engine.begin() as c:
        rows = db_quota.status(c, {"k": 5000})
    assert len(rows) == 1
    row = rows[0]
    assert row["calls_today"] == 15
    assert row["daily_budget"] == 5000
    assert row["quota"] == 20
    assert [h["holder"] for h in row["holders"]] == ["h:1#a"]  # released: in its grace
    assert row["holders"][0]["units"] == 0
