"""Database URLs: a password with reserved characters is split right, re-encoded and hidden;
a malformed URL is one line naming the setting."""

from __future__ import annotations

import psycopg
import pytest
import sqlalchemy as sa

from etl import dburl, errors
from etl.db.engine import sqlalchemy_url
from etl.settings import load_settings, unknown_env

PASSWORDS = ["p@ssw0rdXYZ", "pa:ss:w0rdXYZ", "pa/ss/w0rdXYZ", "50%offXYZ", "a@b:c/d%eXYZ", "p%40ss"]


def _settings(url: str) -> object:
    return load_settings(env={"ETL_CONFIG": "", "ETL_DATABASE_URL": url})


@pytest.mark.parametrize("password", PASSWORDS)
def test_password_with_reserved_characters_is_fully_hidden(password: str) -> None:
    s = load_settings(
        env={
            "ETL_CONFIG": "",
            "ETL_DATABASE_URL": f"postgresql://etl:{password}@db.example:5432/etl",
        }
    )
    assert s.database_url_redacted() == "postgresql://etl:***@db.example:5432/etl"
    assert password not in repr(s)


@pytest.mark.parametrize("password", PASSWORDS)
def test_drivers_read_the_user_password_and_host_that_were_written(password: str) -> None:
    s = load_settings(
        env={
            "ETL_CONFIG": "",
            "ETL_DATABASE_URL": f"postgresql://etl:{password}@db.example:5432/etl",
        }
    )
    assert s.database_url is not None
    url = s.database_url.get_secret_value()
    # "p%40ss" was already percent-encoded: it means p@ss, as libpq reads it.
    meant = "p@ss" if password == "p%40ss" else password
    info = psycopg.conninfo.conninfo_to_dict(url)
    assert (info["user"], info["password"], info["host"]) == ("etl", meant, "db.example")
    assert (info["port"], info["dbname"]) == ("5432", "etl")
    parsed = sa.engine.make_url(sqlalchemy_url(url))
    assert (parsed.username, parsed.password, parsed.host, parsed.port) == (
        "etl",
        meant,
        "db.example",
        5432,
    )
    assert meant in s.secrets()


@pytest.mark.parametrize(
    "url",
    [
        "postgresql:///etl?host=/tmp/sock",
        "postgresql://etl@db/etl",
        "postgresql://etl:secret@[::1]:5432/etl",
        "postgresql://etl:secret@h1:5432,h2:5433/etl?target_session_attrs=read-write",
        "postgres://db",
    ],
)
def test_well_formed_urls_are_kept(url: str) -> None:
    assert dburl.normalize(url) == url


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("postgresql://etl:s3cr3tXYZ@db:54x2/etl", "port is not a number"),
        ("postgresql://etl:s3cr3tXYZ@db:99999/etl", "port is not a number"),
        ("postgresql://etl:s3cr3tXYZ@[::1:5432/etl", "closing ']'"),
        ("postgresql://etl:s3cr3tXYZ@db:/etl", "no port"),
        ("mysql://etl:s3cr3tXYZ@db/etl", "scheme must be postgresql://"),
        ("etl:s3cr3tXYZ@db/etl", "not a URL"),
    ],
)
def test_malformed_url_is_one_line_naming_the_setting(url: str, problem: str) -> None:
    with pytest.raises(errors.ConfigError) as info:
        _settings(url)
    message = str(info.value)
    assert "ETL_DATABASE_URL" in message
    assert problem in message
    assert "\n" not in message
    assert "s3cr3t" not in message


def test_password_in_the_query_is_hidden_too() -> None:
    s = load_settings(
        env={"ETL_CONFIG": "", "ETL_DATABASE_URL": "postgresql:///etl?host=/tmp&password=hunter2XY"}
    )
    assert s.database_url_redacted() == "postgresql:///etl?host=/tmp&password=***"
    assert "hunter2XY" in s.secrets()


def test_urls_in_driver_messages_are_scrubbed() -> None:
    text = 'cannot connect to postgresql://etl:p@ss/w0rd@db/etl: "timeout"'
    assert dburl.scrub(text) == 'cannot connect to postgresql://etl:***@db/etl: "timeout"'


def test_unknown_etl_variable_names_the_closest_setting() -> None:
    (warning,) = unknown_env({"ETL_TOP_QSP": "3", "ETL_CONFIG": "", "HOME": "/root"})
    assert warning.startswith("ETL_TOP_QSP is not an etl setting")
    assert "did you mean ETL_TOP_QPS?" in warning
    assert unknown_env({"ETL_TOP_QPS": "3", "ETL_CONFIG": ""}) == []
    (far,) = unknown_env({"ETL_ZZZZZZZZ": "1"})
    assert "did you mean" not in far
