"""The `etl` command as a user meets it: input errors, status, dlq, exit codes."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import psycopg

from etl.simulator.server import SimulatorConfig, SimulatorThread
from tests.helpers import etl_cmd, etl_env


def run(
    env: dict[str, str], *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        etl_cmd(*args),
        env=env,
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def count(url: str) -> int:
    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT count(*) FROM sync_queue").fetchone()
    assert row is not None
    return int(row[0])


def test_a_bad_id_file_enqueues_nothing_and_names_the_lines(db_url: str, tmp_path: Path) -> None:
    env = etl_env(db_url, "http://127.0.0.1:9/router/rest")
    path = tmp_path / "ids.txt"
    path.write_text("500031414182214\nnot-an-id\n500031414182215\n12.5\n")
    result = run(env, "enqueue", "--file", str(path))
    assert result.returncode == 2
    assert f"{path}: line 2" in result.stderr
    assert f"{path}: line 4" in result.stderr
    assert "nothing was enqueued" in result.stderr
    assert count(db_url) == 0
    ok = run(env, "enqueue", "--file", str(path), "--skip-invalid")
    assert ok.returncode == 0, ok.stderr
    assert "enqueued 2 of 2" in ok.stdout
    assert count(db_url) == 2


def test_stdin_and_omni_csv(db_url: str) -> None:
    env = etl_env(db_url, "http://127.0.0.1:9/router/rest")
    result = run(
        env,
        "enqueue",
        "--api",
        "omni",
        "-",
        stdin="user_id,order_id,out_order_id\n3031798632,108717674563804955,54321\n",
    )
    assert result.returncode == 0, result.stderr
    assert count(db_url) == 1


def test_missing_file_is_a_clear_error(db_url: str, tmp_path: Path) -> None:
    env = etl_env(db_url, "http://127.0.0.1:9/router/rest")
    result = run(env, "enqueue", "--file", str(tmp_path / "nope.txt"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr
    assert "Traceback" not in result.stderr


def test_sync_exit_code_reports_failed_ids_and_dlq_requeues(db_url: str) -> None:
    poison = "500031414182299"
    with SimulatorThread(SimulatorConfig(poison_ids=frozenset({poison}))) as sim:
        env = etl_env(db_url, sim.url, max_attempts=1)
        assert run(env, "enqueue", "500031414182214", poison).returncode == 0
        result = run(env, "sync")
        assert result.returncode == 1, result.stderr
        assert "failed 1" in result.stdout
        listing = run(env, "dlq", "list")
        assert poison in listing.stdout
        assert "CallerError" in listing.stdout
        status = run(env, "status")
        assert status.returncode == 0
        assert "dead" in status.stdout
        assert "no active ban" in status.stdout
        requeue = run(env, "dlq", "requeue", "--error-class", "CallerError")
        assert "requeued 1" in requeue.stdout
    with psycopg.connect(db_url) as conn:
        row = conn.execute("SELECT state FROM sync_queue WHERE key = %s", (poison,)).fetchone()
    assert row == ("pending",)


def test_commands_refuse_a_database_without_the_schema(empty_db_url: str) -> None:
    env = etl_env(empty_db_url, "http://127.0.0.1:9/router/rest")
    result = run(env, "status")
    assert result.returncode == 2
    assert "run `etl migrate`" in result.stderr


def test_unreachable_database_is_a_clear_error(tmp_path: Path) -> None:
    env = etl_env("postgresql://etl:s3cret-pw@127.0.0.1:1/etl", "http://127.0.0.1:9/router/rest")
    result = run(env, "status")
    assert result.returncode == 1
    assert result.stderr.startswith("etl: error: database: connection failed")
    assert "Traceback" not in result.stderr
    assert "s3cret-pw" not in result.stderr + result.stdout


def test_simulate_starts_quietly_and_stops_on_sigterm(tmp_path: Path) -> None:
    import signal
    import socket
    import time

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_CONFIG="", ETL_DATA_DIR=str(tmp_path))
    proc = subprocess.Popen(
        etl_cmd("simulate", "--port", str(port)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert "listening" in first
        time.sleep(0.5)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 0
    assert "alembic" not in err  # no INFO chatter from the migration library
    assert "Traceback" not in err
