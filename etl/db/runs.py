"""Run history: one ``sync_runs`` row per run of worker / sync / backfill / replay / demo."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from etl.db.tables import sync_runs

KINDS = ("worker", "sync", "backfill", "replay", "demo", "tmc", "load")
HEARTBEAT_SECONDS = 15.0  # a running process touches its run at least this often
STALE_SECONDS = 90.0  # a running run not heard of for this long is shown as gone


@dataclass
class RunCounters:
    ids_claimed: int = 0
    api_calls: int = 0
    retries: int = 0
    bans: int = 0
    orders_inserted: int = 0
    orders_updated: int = 0
    orders_unchanged: int = 0
    orders_stale: int = 0
    not_found: int = 0
    failed: int = 0
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, other: RunCounters) -> None:
        for name, value in asdict(other).items():
            if name == "details":
                for k, v in value.items():
                    if isinstance(v, int | float):
                        self.details[k] = self.details.get(k, 0) + v
                    else:
                        self.details[k] = v
            else:
                setattr(self, name, getattr(self, name) + value)

    def numbers(self) -> dict[str, int]:
        return {k: v for k, v in asdict(self).items() if k != "details"}

    def columns(self) -> dict[str, Any]:
        values = asdict(self)
        values["details"] = values["details"] or None
        return values


def host_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` runs on this host (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as fh:
            return fh.read().split(") ", 1)[1][:1] != "Z"
    except (OSError, IndexError):
        return True


def start(conn: Connection, kind: str) -> int:
    """Insert a ``running`` row and return its id (the caller commits)."""
    if kind not in KINDS:
        raise ValueError(f"unknown run kind {kind!r}")
    run_id = conn.execute(
        sa.insert(sync_runs).values(kind=kind, host=host_id()).returning(sync_runs.c.id)
    ).scalar_one()
    return int(run_id)


def update(conn: Connection, run_id: int, counters: RunCounters) -> None:
    conn.execute(
        sa.update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(heartbeat_at=sa.func.now(), **counters.columns())
    )


def increment(conn: Connection, run_id: int, delta: RunCounters) -> None:
    """Add ``delta`` to the run's counters and beat its heart — in the caller's transaction, so
    the counters of a batch commit with the batch (a killed run's counters stay truthful)."""
    values: dict[str, Any] = {
        name: getattr(sync_runs.c, name) + value for name, value in delta.numbers().items() if value
    }
    conn.execute(
        sa.update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(heartbeat_at=sa.func.now(), **values)
    )


def set_status(conn: Connection, run_id: int, status: str, error: str | None) -> None:
    """End a run without touching its counters (those committed with each batch are exact)."""
    conn.execute(
        sa.update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(status=status, error=error, ended_at=sa.func.now())
    )


def heartbeat(conn: Connection, run_id: int) -> None:
    conn.execute(
        sa.update(sync_runs).where(sync_runs.c.id == run_id).values(heartbeat_at=sa.func.now())
    )


def mark_killed_local(conn: Connection, host: str, alive: Callable[[int], bool]) -> int:
    """Runs still ``running`` whose process on this ``host`` is gone (SIGKILL, OOM, power) →
    ``killed``, ended at their last heartbeat."""
    rows = conn.execute(
        sa.select(sync_runs.c.id, sync_runs.c.host).where(
            sync_runs.c.status == "running", sync_runs.c.host.like(f"{host}:%")
        )
    ).all()
    pids = {rid: _pid_of(h, host) for rid, h in rows}
    gone = [rid for rid, pid in pids.items() if pid is not None and not alive(pid)]
    if not gone:
        return 0
    conn.execute(
        sa.update(sync_runs)
        .where(sync_runs.c.id.in_(gone), sync_runs.c.status == "running")
        .values(
            status="killed",
            ended_at=sa.func.coalesce(sync_runs.c.heartbeat_at, sync_runs.c.started_at),
            error="the process vanished (killed?) while the run was going",
        )
    )
    return len(gone)


def _pid_of(holder: str | None, host: str) -> int | None:
    if not holder or not holder.startswith(host + ":"):
        return None
    text = holder[len(host) + 1 :]
    return int(text) if text.isdigit() else None


def liveness(row: dict[str, Any], now: datetime, alive: Callable[[int], bool] = pid_alive) -> str:
    """How a run looks now: its status, or for a ``running`` run whose process is gone (same
    host) or silent for STALE_SECONDS, ``killed?`` / ``stale`` with the last sign of life."""
    status = str(row["status"])
    if status != "running":
        return status
    pid = _pid_of(row.get("host"), socket.gethostname())
    if pid is not None and not alive(pid):
        return "killed (process gone)"
    last = row.get("heartbeat_at") or row.get("started_at")
    if isinstance(last, datetime) and (now - last).total_seconds() > STALE_SECONDS:
        return f"stale (silent {int((now - last).total_seconds())}s)"
    return status


def finish(
    conn: Connection, run_id: int, counters: RunCounters, status: str, error: str | None = None
) -> None:
    conn.execute(
        sa.update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(status=status, error=error, ended_at=sa.func.now(), **counters.columns())
    )
