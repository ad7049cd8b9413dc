"""`etl prune` and the worker's prune as real processes: dry run, the real thing, an id queued
again after its row was pruned, and partitions created ahead."""

from __future__ import annotations

import signal
import subprocess
import time
from datetime import UTC, datetime

import psycopg
import pytest

from etl.db import partitions
from etl.simulator.server import SimulatorConfig, SimulatorThread
from tests.helpers import etl_cmd, etl_env, one, q

IDS = ("500031414182214", "500031414182215", "500031414182216")
WAITING = "500031414182217"


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        etl_cmd(*args), env=env, capture_output=True, text=True, timeout=120, check=False
    )


def _age(db_url: str, days: int) -> None:
    """Make every queue row look finished (done_at) or queued ``days`` ago."""
    with psycopg.connect(db_url) as conn:
        conn.execute(
            "UPDATE sync_queue SET done_at = CASE WHEN done_at IS NOT NULL "
            "THEN now() - make_interval(days => %s) END, "
            "updated_at = now() - make_interval(days => %s)",
            (days, days),
        )


def test_prune_dry_run_changes_nothing_then_prune_and_a_pruned_id_comes_back(db_url: str) -> None:
    with SimulatorThread(SimulatorConfig()) as sim:
        env = etl_env(db_url, sim.url)
        assert run(env, "enqueue", *IDS).returncode == 0
        synced = run(env, "sync")
        assert synced.returncode == 0, synced.stderr
        assert run(env, "enqueue", WAITING).returncode == 0  # pending, never fetched
        _age(db_url, 100)
        archived = one(db_url, "SELECT count(*) FROM order_archive")

        dry = run(env, "prune", "--dry-run")
        assert dry.returncode == 0, dry.stderr
        assert "sync_queue     would remove 3 finished rows (older than 90 days)" in dry.stdout
        assert "order_archive  would remove 0 superseded versions" in dry.stdout
        assert "sync_runs      would remove 0 ended runs" in dry.stdout
        assert one(db_url, "SELECT count(*) FROM sync_queue") == 4

        done = run(env, "prune")
        assert done.returncode == 0, done.stderr
        assert "sync_queue     removed 3 finished rows" in done.stdout
        assert q(db_url, "SELECT key, state FROM sync_queue") == [(WAITING, "pending")]
        assert one(db_url, "SELECT count(*) FROM order_archive") == archived  # all current
        raw = run(env, "raw", "wdk", IDS[0])
        assert raw.returncode == 0, raw.stderr
        assert IDS[0] in raw.stdout

        # the ids come back (a file, a message, a refresh): queued again, fetched again
        again = run(env, "enqueue", IDS[0], IDS[1])
        assert again.returncode == 0, again.stderr
        assert one(db_url, "SELECT count(*) FROM sync_queue WHERE state = 'pending'") == 3
        synced = run(env, "sync")
        assert synced.returncode == 0, synced.stderr
        states = dict(q(db_url, "SELECT key, state FROM sync_queue"))
        assert states == {IDS[0]: "done", IDS[1]: "done", WAITING: "done"}


def test_the_worker_prunes_and_creates_partitions_ahead(db_url: str) -> None:
    ahead = [partitions.name_of(m) for m in partitions.months_ahead(datetime.now(UTC))]
    with psycopg.connect(db_url) as conn:
        for name in ahead[1:]:
            conn.execute(f"ALTER TABLE order_archive DETACH PARTITION {name}")
            conn.execute(f"DROP TABLE {name}")

    def present() -> set[str]:
        return {r[0] for r in q(db_url, "SELECT relname FROM pg_class WHERE relispartition")}

    assert not set(ahead[1:]) & present()
    with SimulatorThread(SimulatorConfig()) as sim:
        env = etl_env(db_url, sim.url, log_level="INFO", prune_interval_seconds=3600)
        worker = subprocess.Popen(
            etl_cmd("worker"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not set(ahead) <= present():
                time.sleep(0.3)
        finally:
            worker.send_signal(signal.SIGTERM)
            _out, err = worker.communicate(timeout=60)
    assert set(ahead) <= present()
    assert worker.returncode == 0, err
    assert "prune: removed sync_queue 0 finished rows" in err
    assert f"created partitions {', '.join(ahead[1:])}" in err


@pytest.mark.parametrize("signals", [1, 2], ids=["graceful", "hard"])
def test_a_stop_during_a_prune_logs_a_line_not_a_traceback(db_url: str, signals: int) -> None:
    """SIGTERM while a prune's statement waits for a lock. One signal: the worker does not cancel
    the job (APScheduler's shutdown would, and log the cancellation as an error with a
    traceback); the prune ends at its next batch and logs its line. Two: the job is cut short, in
    one line. Either way the worker exits 0 once the statement ends."""
    waiting = (
        "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
        "AND position('DELETE FROM backfill_ids' in query) > 0"
    )
    with (
        SimulatorThread(SimulatorConfig()) as sim,
        psycopg.connect(db_url) as blocker,  # a transaction: the lock is held until rollback
    ):
        blocker.execute("LOCK TABLE backfill_ids IN ACCESS EXCLUSIVE MODE")
        env = etl_env(db_url, sim.url, log_level="INFO", prune_interval_seconds=3600)
        worker = subprocess.Popen(
            etl_cmd("worker"), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        try:
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and one(db_url, waiting) == 0:
                time.sleep(0.2)
            assert one(db_url, waiting) == 1  # the prune's delete waits for the lock
            for _ in range(signals):
                worker.send_signal(signal.SIGTERM)
                time.sleep(1.5)
            assert worker.poll() is None  # the statement still waits (grace period: 30 s)
            blocker.rollback()
            _out, err = worker.communicate(timeout=60)
        finally:
            if worker.poll() is None:
                worker.kill()
                worker.communicate()
    assert worker.returncode == 0, err
    assert "SIGTERM received: stopping" in err
    if signals == 1:
        assert "prune: removed sync_queue 0 finished rows" in err
        assert "cut short" not in err
    else:
        assert "SIGTERM received again: releasing the ids in flight" in err
        assert "prune cut short by the stop" in err
    for bad in ("Traceback", "CancelledError", "Error running job"):
        assert bad not in err, err
