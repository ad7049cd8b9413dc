"""A database password with reserved characters, a malformed URL and a misspelt variable, as a
user meets them: real `etl` processes."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from tests.helpers import etl_cmd

FRAGMENTS = ("ssw0rd", "XYZ", "w0rd")


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        etl_cmd(*args), env=env, capture_output=True, text=True, timeout=120, check=False
    )


def bare_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_CONFIG="", ETL_LOG_LEVEL="INFO", **values)
    return env


@pytest.mark.parametrize("password", ["p@ssw0rdXYZ", "p:ssw0rdXYZ", "p/ssw0rdXYZ", "p%ssw0rdXYZ"])
def test_password_is_hidden_in_config_and_in_connection_errors(password: str) -> None:
    env = bare_env(ETL_DATABASE_URL=f"postgresql://etl:{password}@127.0.0.1:1/etl")
    shown = run(env, "config")
    assert shown.returncode == 0, shown.stderr
    assert "database_url = postgresql://etl:***@127.0.0.1:1/etl" in shown.stdout
    failed = run(env, "status")
    assert failed.returncode == 1
    assert "127.0.0.1" in failed.stderr  # the host as written, not a piece of the password
    for output in (shown.stdout + shown.stderr, failed.stdout + failed.stderr):
        assert not any(f in output for f in FRAGMENTS), output
    assert "Traceback" not in failed.stderr


@pytest.mark.parametrize(
    "url", ["postgresql://etl:s3cr3t@db:5x32/etl", "postgresql://etl:s3cr3t@[::1/etl"]
)
def test_malformed_database_url_is_one_line_and_exit_2(url: str) -> None:
    result = run(bare_env(ETL_DATABASE_URL=url), "status")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("etl: error:")
    assert "ETL_DATABASE_URL" in lines[0]
    assert "s3cr3t" not in result.stderr


def test_misspelt_variable_gets_a_warning_naming_the_setting() -> None:
    result = run(bare_env(ETL_TOP_QSP="3"), "config")
    assert result.returncode == 0
    assert "ETL_TOP_QSP is not an etl setting" in result.stderr
    assert "did you mean ETL_TOP_QPS?" in result.stderr


@pytest.fixture
def special_role(db_url: str) -> Iterator[tuple[str, str]]:
    """A login role with a password full of reserved characters, allowed to read everything."""
    role, password = f"etl_pw_{os.getpid()}", "a@b:c/d%e@XYZ"
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(
            sql.SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                sql.Identifier(role), sql.Literal(password)
            )
        )
        conn.execute(sql.SQL("GRANT pg_read_all_data TO {}").format(sql.Identifier(role)))
    yield role, password
    with psycopg.connect(db_url, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


def test_a_raw_password_with_reserved_characters_connects(
    db_url: str, special_role: tuple[str, str]
) -> None:
    role, password = special_role
    info = psycopg.conninfo.conninfo_to_dict(db_url)
    host = str(info.get("host") or "")
    if host.startswith("/"):
        where, query = "", f"?host={host}" + (f"&port={info['port']}" if info.get("port") else "")
    else:
        where, query = host + (f":{info['port']}" if info.get("port") else ""), ""
    # Written as a person would: the password as it is, not percent-encoded.
    url = f"postgresql://{role}:{password}@{where}/{info['dbname']}{query}"
    result = run(bare_env(ETL_DATABASE_URL=url), "report", "daily-sales")
    assert result.returncode == 0, result.stderr
    assert "report_daily_sales" in result.stdout
    assert "XYZ" not in result.stderr
