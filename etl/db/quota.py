"""The shared quota's leases and daily call counts in Postgres. Owns their SQL.

One row per (app key, holder process) in ``top_quota_leases`` and one per (app key, China-time
day) in ``top_quota_days``. The rules (who gets how many units, why the sum stays under the
quota) are in :mod:`etl.top.quota`; this module only reads and writes the rows, one transaction
per renewal, serialised per app key by a transaction-level advisory lock.

A renewal costs one transaction of four statements (lock, read the app key's leases, upsert the
lease, add the calls to the day's count), plus one rare one when an expired or dead lease is
cleaned up.
"""

from __future__ import annotations

import socket
from dataclasses import dataclass
from datetime import date
from typing import Any

import psycopg
import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from etl import errors
from etl.db import runs
from etl.top import quota as rules

FORGET_SECONDS = 60  # expired leases are deleted this long after they lapse


@dataclass(frozen=True)
class LeaseRow:
    holder: str
    units: int
    releasing: int  # 0 once its grace is over
    demand: int
    live: bool  # not expired
    expired_for: float  # seconds since it lapsed (0 while live)


def _lock(conn: Connection, app_key: str) -> None:
    conn.execute(
        sa.text("SELECT pg_advisory_xact_lock(hashtextextended('etl.quota:' || :k, 0))"),
        {"k": app_key},
    )


def _rows(conn: Connection, app_key: str) -> list[LeaseRow]:
    rows = conn.execute(
        sa.text(
            "SELECT holder, units, CASE WHEN release_until > now() THEN releasing ELSE 0 END, "
            "demand, expires_at > now(), "
            "greatest(0, extract(epoch FROM now() - expires_at))::float8 "
            "FROM top_quota_leases WHERE app_key = :k"
        ),
        {"k": app_key},
    ).all()
    return [LeaseRow(r[0], r[1], r[2], r[3], r[4], r[5]) for r in rows]


def _pid_of(holder: str, host: str) -> int | None:
    """The pid in ``host:pid#token`` when the holder runs on ``host``."""
    prefix = host + ":"
    if not holder.startswith(prefix):
        return None
    pid = holder[len(prefix) :].split("#", 1)[0]
    return int(pid) if pid.isdigit() else None


def _tidy(conn: Connection, app_key: str, rows: list[LeaseRow], me: str) -> None:
    """Forget long-expired leases; shorten the leases of processes of this host that are gone
    (SIGKILLed) to a short grace: their last calls may still be in the current second."""
    host = socket.gethostname()
    stale = [r.holder for r in rows if not r.live and r.expired_for > FORGET_SECONDS]
    dead = [
        r.holder
        for r in rows
        if r.live
        and r.holder != me
        and (pid := _pid_of(r.holder, host)) is not None
        and not runs.pid_alive(pid)
    ]
    if stale:
        conn.execute(
            sa.text(
                "DELETE FROM top_quota_leases WHERE app_key = :k "
                "AND holder = ANY(CAST(:h AS text[]))"
            ),
            {"k": app_key, "h": stale},
        )
    if dead:
        conn.execute(
            sa.text(
                "UPDATE top_quota_leases SET expires_at = least(expires_at, now() + "
                "make_interval(secs => :g)) WHERE app_key = :k "
                "AND holder = ANY(CAST(:h AS text[]))"
            ),
            {"k": app_key, "h": dead, "g": rules.DEAD_GRACE},
        )


def renew(conn: Connection, r: rules.Renewal) -> rules.Grant:
    """Renew (or take) the lease of ``r.holder`` and decide its grant. Runs in the caller's
    transaction, which must commit at once (the lock is held until then)."""
    _lock(conn, r.app_key)
    total = rules.total_units(r.quota)
    rows = _rows(conn, r.app_key)
    _tidy(conn, r.app_key, rows, r.holder)
    mine = next((x for x in rows if x.holder == r.holder and x.live), None)
    others = [x for x in rows if x.live and x.holder != r.holder]
    held_by_others = sum(x.units + x.releasing for x in others)
    if mine is not None:
        current, releasing = mine.units, mine.releasing
    else:
        # A new lease, or one that lapsed (store outage): it keeps what it uses only if free.
        current, releasing = min(r.current, max(0, total - held_by_others)), 0
    holdings = [rules.Holding(x.holder, x.units, x.releasing, x.demand) for x in others]
    holdings.append(rules.Holding(r.holder, current, releasing, r.demand))
    decision = rules.decide(r.holder, current, holdings, total)
    conn.execute(
        sa.text(
            "INSERT INTO top_quota_leases AS l (app_key, holder, role, quota, units, releasing, "
            "release_until, demand, rate, renewed_at, expires_at) VALUES (:k, :h, :role, :q, "
            ":units, :rel, CASE WHEN :released > 0 THEN now() + make_interval(secs => :grace) "
            "END, :demand, :rate, now(), now() + make_interval(secs => :ttl)) "
            "ON CONFLICT (app_key, holder) DO UPDATE SET role = excluded.role, "
            "quota = excluded.quota, units = excluded.units, demand = excluded.demand, "
            "rate = excluded.rate, renewed_at = now(), expires_at = excluded.expires_at, "
            "releasing = CASE WHEN :released > 0 THEN :rel ELSE "
            "  CASE WHEN l.release_until > now() THEN l.releasing ELSE 0 END END, "
            "release_until = CASE WHEN :released > 0 THEN excluded.release_until "
            "  WHEN l.release_until > now() THEN l.release_until END, "
            "started_at = CASE WHEN l.expires_at > now() THEN l.started_at ELSE now() END"
        ),
        {
            "k": r.app_key,
            "h": r.holder,
            "role": r.role,
            "q": r.quota,
            "units": decision.units,
            "rel": releasing + decision.released,
            "released": decision.released,
            "grace": rules.RELEASE_GRACE,
            "demand": r.demand,
            "rate": round(r.rate, 3),
            "ttl": rules.LEASE_SECONDS,
        },
    )
    today = _count_calls(conn, r.app_key, r.day, r.calls)
    return rules.Grant(units=decision.units, holders=len(others) + 1, calls_today=today)


def _count_calls(conn: Connection, app_key: str, day: date, calls: int) -> int:
    value = conn.execute(
        sa.text(
            "INSERT INTO top_quota_days (app_key, day, calls) VALUES (:k, :d, :n) "
            "ON CONFLICT (app_key, day) DO UPDATE SET calls = top_quota_days.calls + :n, "
            "updated_at = now() RETURNING calls"
        ),
        {"k": app_key, "d": day, "n": calls},
    ).scalar_one()
    return int(value)


def release(conn: Connection, app_key: str, holder: str, calls: int, day: date) -> None:
    """Give the lease back on a clean exit: its units stay counted for the grace (the last
    calls may still be in the current second), then the row lapses."""
    conn.execute(
        sa.text(
            "UPDATE top_quota_leases SET releasing = units + CASE WHEN release_until > now() "
            "THEN releasing ELSE 0 END, units = 0, rate = 0, demand = 0, "
            "release_until = now() + make_interval(secs => :g), "
            "expires_at = least(expires_at, now() + make_interval(secs => :g)) "
            "WHERE app_key = :k AND holder = :h"
        ),
        {"k": app_key, "h": holder, "g": rules.RELEASE_GRACE},
    )
    if calls:
        _count_calls(conn, app_key, day, calls)


class PostgresLeaseStore:
    """:class:`etl.top.quota.LeaseStore` on an engine (each call is one short transaction)."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine

    def renew(self, renewal: rules.Renewal) -> rules.Grant:
        with _translated(), self.engine.begin() as conn:
            return renew(conn, renewal)

    def release(self, app_key: str, holder: str, calls: int, day: date) -> None:
        with _translated(), self.engine.begin() as conn:
            release(conn, app_key, holder, calls, day)


class _translated:
    def __enter__(self) -> None:
        return None

    def __exit__(self, et: Any, e: BaseException | None, tb: Any) -> None:
        if isinstance(
            e, sa.exc.OperationalError | sa.exc.InterfaceError | psycopg.OperationalError
        ):
            raise errors.DatabaseError(f"database unavailable: {str(e).splitlines()[0]}") from e


# ------------------------------------------------------------------------------ status


def status(conn: Connection, budgets: dict[str, int] | None = None) -> list[dict[str, Any]]:
    """Per app key with a live lease or calls today: the quota, the rate in use now, the
    processes holding shares, and calls today (China time) with the daily budget if known."""
    day = rules.china_day()
    leases = conn.execute(
        sa.text(
            "SELECT app_key, holder, role, quota, units, rate, demand, started_at, renewed_at "
            "FROM top_quota_leases WHERE expires_at > now() ORDER BY app_key, started_at, holder"
        )
    ).mappings()
    calls: dict[str, int] = dict(
        conn.execute(
            sa.text("SELECT app_key, calls FROM top_quota_days WHERE day = :d"), {"d": day}
        ).all()
    )
    keys: dict[str, dict[str, Any]] = {}
    for lease in leases:
        entry = keys.setdefault(lease["app_key"], _entry(lease["app_key"]))
        entry["quota"] = max(entry["quota"] or 0.0, float(lease["quota"]))
        entry["rate"] += float(lease["rate"])
        entry["units"] += int(lease["units"])
        entry["holders"].append(
            {
                "holder": lease["holder"],
                "role": lease["role"],
                "units": lease["units"],
                "rate": float(lease["rate"]),
                "since": lease["started_at"],
                "renewed_at": lease["renewed_at"],
            }
        )
    for app_key, n in calls.items():
        keys.setdefault(app_key, _entry(app_key))["calls_today"] = int(n)
    for app_key, budget in (budgets or {}).items():
        if app_key in keys:
            keys[app_key]["daily_budget"] = budget or None
    return [keys[k] for k in sorted(keys)]


def _entry(app_key: str) -> dict[str, Any]:
    return {
        "app_key": app_key,
        "quota": None,
        "rate": 0.0,
        "units": 0,
        "holders": [],
        "calls_today": 0,
        "daily_budget": None,
        "day": rules.china_day(),
    }
