"""`etl report` as a user meets it: options that do not apply are errors (exit 2), JSON output
has one type per column."""

from __future__ import annotations

import subprocess

import orjson
import psycopg
import pytest

from tests.helpers import etl_cmd, etl_env


def run(db_url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = etl_env(db_url, "http://127.0.0.1:9/router/rest")
    return subprocess.run(
        etl_cmd(*args), env=env, capture_output=True, text=True, timeout=120, check=False
    )


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (("sync-freshness", "--since", "2024-01-01"), "--since does not apply"),
        (("daily-sales", "--since", "2024-02-01", "--until", "2024-01-01"), "is after --until"),
        (("daily-sales", "--limit", "0"), "--limit must be at least 1"),
        (("item-sales", "--store", "S1"), "--store does not apply"),
    ],
)
def test_options_that_cannot_apply_exit_2(db_url: str, args: tuple[str, ...], problem: str) -> None:
    result = run(db_url, "report", *args)
    assert result.returncode == 2, result.stdout + result.stderr
    assert problem in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert result.stdout == ""


def test_json_numbers_and_decimals(db_url: str) -> None:
    with psycopg.connect(db_url) as conn:  # an order through the real loader would do as well
        conn.execute(
            "INSERT INTO wdk_orders (biz_order_id, store_id, trd_type, pay_time, original_amt, "
            "pay_amt, post_fee, payload_hash, synced_at, first_synced_at, changed_at, "
            "fetched_at) "
            "SELECT 1000000000000000001, 'S1', 1, '2024-01-01 10:00+08', 1250, 1200, 0, "
            "'h', now(), now(), now(), now()"
        )
    result = run(db_url, "report", "daily-sales", "--format", "json")
    assert result.returncode == 0, result.stderr
    (row,) = orjson.loads(result.stdout)
    assert row["orders"] == 1
    assert row["paid_fen"] == 1200
    assert row["paid_yuan"] == "12.00"
    assert row["original_yuan"] == "12.50"
