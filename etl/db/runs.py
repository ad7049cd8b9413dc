"""Run history: one ``sync_runs`` row per run of worker / sync / backfill / replay / demo."""

from __future__ import annotations

import os
import socket
from dataclasses import asdict, dataclass, field
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from etl.db.tables import sync_runs

KINDS = ("worker", "sync", "backfill", "replay", "demo", "load")


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
    conn.execute(sa.update(sync_runs).where(sync_runs.c.id == run_id).values(**counters.columns()))


def finish(
    conn: Connection, run_id: int, counters: RunCounters, status: str, error: str | None = None
) -> None:
    conn.execute(
        sa.update(sync_runs)
        .where(sync_runs.c.id == run_id)
        .values(status=status, error=error, ended_at=sa.func.now(), **counters.columns())
    )
