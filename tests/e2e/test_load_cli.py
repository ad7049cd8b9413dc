"""`etl load` and `etl raw` as a user runs them: real processes, a real process pool."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import orjson
import psycopg

from etl.simulator import data
from tests.helpers import etl_cmd, etl_env

NO_TOP = "http://127.0.0.1:9/router/rest"  # nothing listens: no platform call may be made


def _page(first: int, n: int, *, wrapped: bool) -> bytes:
    orders = [data.wdk_order(first + i) for i in range(n)]
    if wrapped:
        body: dict[str, Any] = {
            "alibaba_wdk_order_get_response": {
                "result": {"return_code": "SUCCESS", "orders": {"order": orders}}
            }
        }
    else:
        body = {"result": {"return_code": "SUCCESS", "orders": orders}}
    return orjson.dumps(body) + b"\n"


def _q(url: str, query: str) -> Any:
    with psycopg.connect(url) as conn:
        row = conn.execute(query).fetchone()
    assert row is not None
    return row[0]


def _run(env: dict[str, str], *args: str, stdin: bytes | None = None) -> Any:
    return subprocess.run(
        etl_cmd(*args), env=env, input=stdin, capture_output=True, timeout=180, check=False
    )


def test_load_reports_bad_lines_loads_the_rest_and_skips_unchanged(
    db_url: str, tmp_path: Path
) -> None:
    env = etl_env(db_url, NO_TOP, normalize_processes=1)
    first = data.FIRST_DEMO_BIZ_ID
    path = tmp_path / "pages.jsonl"
    path.write_bytes(
        _page(first, 40, wrapped=True)
        + b'{"error_response":{"code":15,"msg":"Remote service error","sub_code":"isv.x"}}\n'
        + b"\n"
        + b'{"result": {"return_code": "SUCCESS", "orders": [ \n'
        + _page(first + 40, 40, wrapped=False)
        + orjson.dumps(data.wdk_order(first + 500))  # a single order object
        + b"\n"
    )
    result = _run(env, "load", "--api", "wdk", str(path))
    assert result.returncode == 1, result.stderr
    err = result.stderr.decode()
    assert f"{path}:2: " in err
    assert "Remote service error" in err
    assert f"{path}:4: MalformedResponse" in err
    assert "inserted 81" in result.stdout.decode()
    assert _q(db_url, "SELECT count(*) FROM wdk_orders") == 81
    assert _q(db_url, "SELECT count(*) FROM order_archive") == 81
    # again from standard input: everything unchanged, nothing normalized
    again = _run(env, "load", "--api", "wdk", "-", stdin=path.read_bytes())
    out = again.stdout.decode()
    assert "unchanged 81" in out
    assert "normalized 0" in out
    assert "<stdin>:4: MalformedResponse" in again.stderr.decode()
    run = _q(
        db_url,
        "SELECT row(kind, orders_unchanged, details->>'orders_normalized') FROM sync_runs "
        "ORDER BY id DESC LIMIT 1",
    )
    assert run == ("load", "81", "0")  # a row value reads back as text
    raw = _run(env, "raw", "wdk", str(first + 500))
    assert raw.returncode == 0, raw.stderr
    assert orjson.loads(raw.stdout) == data.wdk_order(first + 500)
    versions = _run(env, "raw", "wdk", str(first), "--all")
    lines = versions.stdout.splitlines()
    assert len(lines) == 1
    assert orjson.loads(lines[0])["raw"]["biz_order_id"] == first
    missing = _run(env, "raw", "wdk", "1")
    assert missing.returncode == 1
    assert b"no wdk order 1 is stored" in missing.stderr


def _children(pid: int) -> set[int]:
    """Every descendant of ``pid`` (from /proc)."""
    out: set[int] = set()
    frontier = {pid}
    while frontier:
        nxt = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid in frontier:
                nxt.add(int(entry))
        out |= nxt
        frontier = nxt
    return out


def _alive(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def test_sigterm_stops_after_the_batch_in_flight_without_orphans(
    db_url: str, tmp_path: Path
) -> None:
    env = etl_env(db_url, NO_TOP, normalize_processes=2)
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        for page in range(400):  # 20,000 orders: far more than loads before the signal
            fh.write(_page(data.FIRST_DEMO_BIZ_ID + page * 50, 50, wrapped=False))
    proc = subprocess.Popen(
        etl_cmd("load", "--api", "wdk", str(path)),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while _q(db_url, "SELECT count(*) FROM wdk_orders") == 0:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else ""
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2  # the forkserver and its normalizer processes
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    assert b"Traceback" not in err
    assert b"interrupted" in out
    # the forkserver notices its parent is gone on its own, a moment later
    gone_by = time.monotonic() + 10
    while [p for p in workers if _alive(p)] and time.monotonic() < gone_by:
        time.sleep(0.1)
    assert not [p for p in workers if _alive(p)]
    loaded = _q(db_url, "SELECT count(*) FROM wdk_orders")
    assert 0 < loaded < 20_000
    assert loaded == _q(db_url, "SELECT count(*) FROM order_archive")  # whole batches only
    assert _q(db_url, "SELECT status FROM sync_runs") == "interrupted"


def test_workers_leave_when_their_owner_is_killed(db_url: str, tmp_path: Path) -> None:
    """SIGKILL (or the OOM killer) gives the loader no chance to close its pool: the
    normalizer processes notice on their own and exit, nothing is left running."""
    env = etl_env(db_url, NO_TOP, normalize_processes=2)
    path = tmp_path / "big.jsonl"
    with path.open("wb") as fh:
        for page in range(400):
            fh.write(_page(data.FIRST_DEMO_BIZ_ID + page * 50, 50, wrapped=False))
    proc = subprocess.Popen(
        etl_cmd("load", "--api", "wdk", str(path)),
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while _q(db_url, "SELECT count(*) FROM wdk_orders") == 0:
        assert proc.poll() is None
        assert time.monotonic() < deadline
        time.sleep(0.05)
    workers = _children(proc.pid)
    assert len(workers) >= 2
    proc.kill()
    proc.wait(timeout=30)
    gone_by = time.monotonic() + 15
    while [p for p in workers if _alive(p)] and time.monotonic() < gone_by:
        time.sleep(0.2)
    left = [p for p in workers if _alive(p)]
    for pid in left:  # do not leave them behind even when the assertion fails
        os.kill(pid, signal.SIGKILL)
    assert not left
