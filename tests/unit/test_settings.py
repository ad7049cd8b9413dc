"""Settings: precedence, validation messages that name the setting, secrets never shown."""

from __future__ import annotations

import logging
import re
import tomllib
from pathlib import Path

import pytest

from etl import errors, logs
from etl.settings import FIELD_NAMES, SECRET_FIELDS, env_name, load_settings

ROOT = Path(__file__).resolve().parents[2]


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etl.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_defaults_without_file_or_env() -> None:
    s = load_settings(env={"ETL_CONFIG": ""})
    assert s.batch_size == 20
    assert s.top_sign_method == "hmac-sha256"
    assert s.database_url is None


def test_precedence_default_file_env_cli(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "batch_size = 30\ntop_qps = 3\nconcurrency = 7\n")
    env = {"ETL_BATCH_SIZE": "40", "ETL_TOP_QPS": "4"}
    s = load_settings({"batch_size": "50"}, env=env, config_path=cfg)
    assert s.batch_size == 50  # cli beats env
    assert s.top_qps == 4.0  # env beats file
    assert s.concurrency == 7  # file beats default
    assert s.top_timeout == 30.0  # default


def test_config_path_from_env(tmp_path: Path) -> None:
    cfg = _write(tmp_path, 'top_sign_method = "md5"\n')
    assert load_settings(env={"ETL_CONFIG": str(cfg)}).top_sign_method == "md5"


def test_missing_explicit_config_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(errors.ConfigError, match="does not exist"):
        load_settings(env={}, config_path=tmp_path / "nope.toml")


def test_unknown_key_in_file_is_named(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "batch_sise = 5\n")
    with pytest.raises(errors.ConfigError, match="batch_sise"):
        load_settings(env={}, config_path=cfg)


def test_broken_toml_says_where(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "batch_size = = 5\n")
    with pytest.raises(errors.ConfigError, match=re.escape(str(cfg))):
        load_settings(env={}, config_path=cfg)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        ("ETL_TOP_SIGN_METHOD", "sha1", "'md5', 'hmac' or 'hmac-sha256'"),
        ("ETL_TOP_QPS", "0", "greater than 0"),
        ("ETL_TOP_QPS", "fast", "valid number"),
        ("ETL_BATCH_SIZE", "-1", "greater than or equal to 1"),
        ("ETL_LOG_FORMAT", "xml", "'text' or 'json'"),
        ("ETL_TOP_SIMPLIFY", "maybe", "valid boolean"),
        ("ETL_TOP_URL", "gw.api.taobao.com", "should match pattern"),
    ],
)
def test_bad_env_value_names_setting_value_and_problem(
    name: str, value: str, expected: str
) -> None:
    with pytest.raises(errors.ConfigError) as info:
        load_settings(env={name: value, "ETL_CONFIG": ""})
    text = str(info.value)
    assert name in text
    assert repr(value) in text
    assert expected in text


def test_bad_file_value_names_file_and_key(tmp_path: Path) -> None:
    cfg = _write(tmp_path, "concurrency = 0\n")
    with pytest.raises(errors.ConfigError, match=rf"concurrency in {re.escape(str(cfg))}"):
        load_settings(env={}, config_path=cfg)


def test_empty_env_value_counts_as_unset() -> None:
    assert load_settings(env={"ETL_BATCH_SIZE": " ", "ETL_CONFIG": ""}).batch_size == 20


SECRET_ENV = {
    "ETL_TOP_APP_SECRET": "s3cr3t-app-value",
    "ETL_TOP_SESSION": "s3ss10n-key-value",
    "ETL_DATABASE_URL": "postgresql://etl:pa55w0rd-value@db.example:5432/etl",
    "ETL_CONFIG": "",
}


def test_secrets_not_in_repr_or_str() -> None:
    s = load_settings(env=SECRET_ENV)
    for text in (repr(s), str(s), str(s.model_dump())):
        for secret in ("s3cr3t-app-value", "s3ss10n-key-value", "pa55w0rd-value"):
            assert secret not in text
    assert s.database_url_redacted() == "postgresql://etl:***@db.example:5432/etl"
    assert "pa55w0rd-value" in s.secrets()


def test_secret_value_never_echoed_in_validation_error() -> None:
    env = dict(SECRET_ENV, ETL_TOP_APP_SECRET="")
    env["ETL_TOP_APP_KEY"] = ""
    # An invalid secret must be reported without its value.
    with pytest.raises(errors.ConfigError) as info:
        load_settings({"top_app_secret": 12345}, env=env)
    assert "12345" not in str(info.value)
    assert "--top-app-secret=(hidden)" in str(info.value)


def test_log_redaction_scrubs_secret_values() -> None:
    s = load_settings(env=SECRET_ENV)
    records: list[str] = []

    class Capture(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Capture()
    handler.addFilter(logs.RedactingFilter(s.secrets()))
    logger = logging.getLogger("etl.test.redact")
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        logger.debug(
            "url %s session=%s",
            SECRET_ENV["ETL_DATABASE_URL"],
            "s3ss10n-key-value",
            extra={"params": "secret=s3cr3t-app-value"},
        )
    finally:
        logger.removeHandler(handler)
    assert records
    assert "s3ss10n-key-value" not in records[0]
    assert "pa55w0rd-value" not in records[0]


def test_example_config_documents_every_setting() -> None:
    text = (ROOT / "config" / "etl.example.toml").read_text(encoding="utf-8")
    for field in FIELD_NAMES:
        assert re.search(rf"^#? ?{field} = ", text, re.M), f"{field} missing from example"
    # Uncommented lines are valid settings with their default values.
    data = tomllib.loads(text)
    s = load_settings(env={}, config_path=ROOT / "config" / "etl.example.toml")
    default = load_settings(env={"ETL_CONFIG": ""})
    for key in data:
        assert getattr(s, key) == getattr(default, key), key


def test_every_setting_has_an_env_name() -> None:
    assert env_name("top_qps") == "ETL_TOP_QPS"
    assert {"top_app_secret", "top_session", "database_url"} == set(SECRET_FIELDS)


@pytest.mark.parametrize(
    ("env", "claim"),
    [
        ({}, 80),  # one wave: 4 calls of 20
        ({"ETL_TOP_QPS": "50", "ETL_CONCURRENCY": "8"}, 160),  # the cap binds: one wave
        ({"ETL_TOP_QPS": "100"}, 800),  # 2,000 orders/s allowed: the machine is the limit
        ({"ETL_TOP_QPS": "10000", "ETL_BATCH_SIZE": "30"}, 780),  # in whole calls
        ({"ETL_TOP_QPS": "10000", "ETL_BATCH_SIZE": "100", "ETL_CONCURRENCY": "16"}, 1600),
        ({"ETL_TOP_QPS": "10000", "ETL_CLAIM_SIZE": "120"}, 120),  # set: as set
    ],
)
def test_the_default_claim_grows_when_the_quota_outruns_the_machine(
    env: dict[str, str], claim: int
) -> None:
    assert load_settings(env={"ETL_CONFIG": "", **env}).effective_claim_size() == claim
