"""Helpers shared by tests (not fixtures): settings aimed at a simulator."""

from __future__ import annotations

from typing import Any

from etl.settings import Settings, load_settings

FAST = {
    "top_backoff_base": "0.01",
    "top_backoff_max": "0.05",
    "top_qps": "1000",
    "concurrency": "8",
}


def settings_for(url: str, **overrides: Any) -> Settings:
    """Settings for a client of the simulator at ``url`` (no config file, fast retries)."""
    values: dict[str, Any] = {"top_url": url, **FAST}
    values.update({k: str(v) for k, v in overrides.items()})
    return load_settings(values, env={"ETL_CONFIG": ""})


def etl_env(db_url: str, top_url: str, **settings: Any) -> dict[str, str]:
    """Environment for an `etl` subprocess: this test's database and simulator, no config file."""
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(
        ETL_CONFIG="",
        ETL_DATABASE_URL=db_url,
        ETL_TOP_URL=top_url,
        ETL_TOP_BACKOFF_BASE="0.01",
        ETL_TOP_BACKOFF_MAX="0.1",
        ETL_LOG_LEVEL="WARNING",
    )
    env.update({f"ETL_{k.upper()}": str(v) for k, v in settings.items()})
    return env


def etl_cmd(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "etl", *args]


def q(url: str, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    """Rows of ``sql`` on the database at ``url`` (a fresh connection: tests look from outside)."""
    import psycopg

    with psycopg.connect(url) as conn:
        return conn.execute(sql, args).fetchall()


def one(url: str, sql: str, *args: Any) -> Any:
    """The first value of the first row of ``sql``."""
    return q(url, sql, *args)[0][0]


def wait_for_sessions_gone(url: str, timeout: float = 20.0) -> None:
    """Wait until no other session is connected to ``url``'s database: a SIGKILLed client's
    COMMIT already sent still completes on the server after the client died, so what it
    committed can only be counted once its sessions are gone."""
    import time

    deadline = time.monotonic() + timeout
    sql = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE datname = current_database() AND pid <> pg_backend_pid()"
    )
    while one(url, sql):
        if time.monotonic() > deadline:
            raise AssertionError(f"sessions still connected after {timeout:.0f} s")
        time.sleep(0.05)


def rows(engine: Any, sql: str, **params: Any) -> list[Any]:
    """The rows of ``sql`` (bound ``params``), in a transaction of its own."""
    import sqlalchemy as sa

    with engine.begin() as conn:
        return list(conn.execute(sa.text(sql), params).all())
