"""Typed settings, validated once at the edge.

Precedence, lowest first: defaults < the TOML config file (``config/etl.toml``, or the path in
``ETL_CONFIG`` / ``--config``) < ``ETL_*`` environment variables < command-line flags.

Every setting ``name`` is read from the key ``name`` in the config file and from the environment
variable ``ETL_NAME``. Secrets (the app secret, the session key and the database URL, which may
carry a password) are held as :class:`pydantic.SecretStr` so they never show in a ``repr``, a log
line or an error message.
"""

from __future__ import annotations

import difflib
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, field_validator

from etl import dburl, errors

ENV_PREFIX = "ETL_"
DEFAULT_CONFIG_PATH = Path("config/etl.toml")
PRODUCTION_GATEWAY = "https://gw.api.taobao.com/router/rest"

# The demo credentials: the simulator accepts these when none are configured, so a client and a
# simulator started with the same (empty) environment talk to each other.
DEMO_APP_KEY = "12345678"
DEMO_APP_SECRET = "demo-app-secret"  # noqa: S105 - a documented demo value, not a secret
DEMO_SESSION = "demo-session-key"

SignMethod = Literal["md5", "hmac", "hmac-sha256"]
LogFormat = Literal["text", "json"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]


def default_data_dir() -> Path:
    return Path(platformdirs.user_data_dir("etl", appauthor=False))


# The default claim with a quota the machine cannot keep up with (orders a second it allows):
BIG_QUOTA_ORDERS = 2000  # about what one process loads on 2 cores
BIG_QUOTA_CLAIM = 800  # ids: about the batch etl load writes at once (~4 MB of orders)


class Settings(BaseModel):
    """All settings of etl; see ``config/etl.example.toml`` for each one's meaning."""

    model_config = ConfigDict(extra="forbid", frozen=True, validate_default=True)

    # --- database
    database_url: SecretStr | None = Field(
        None, description="PostgreSQL URL; unset = the embedded private cluster in data_dir"
    )
    data_dir: Path = Field(default_factory=default_data_dir, description="local state directory")
    db_pool_size: int = Field(5, ge=1, le=100, description="connections kept per process")
    reader_role: str | None = Field(
        None,
        min_length=1,
        max_length=63,
        description="existing role etl migrate grants read-only access (order tables, views)",
    )

    # --- the platform
    top_url: str = Field(
        PRODUCTION_GATEWAY, pattern=r"^https?://\S+$", description="gateway URL (.../router/rest)"
    )
    top_app_key: str = Field(DEMO_APP_KEY, min_length=1, description="the app's key (app_key)")
    top_app_secret: SecretStr = Field(
        SecretStr(DEMO_APP_SECRET), description="the app's secret (signs every call)"
    )
    top_session: SecretStr = Field(
        SecretStr(DEMO_SESSION), description="the seller's session key (authorisation token)"
    )
    top_sign_method: SignMethod = Field("hmac-sha256", description="md5, hmac or hmac-sha256")
    top_simplify: bool = Field(True, description="ask for the simplified JSON shape")
    top_qps: float = Field(
        10.0,
        gt=0,
        le=10_000,
        description="the app key's calls per second, shared by every process on the database",
    )
    top_quota_headroom: float = Field(
        0.025,
        ge=0,
        le=0.5,
        description="share of the quota left unused as slack for timing jitter (0.025 = 2.5%)",
    )
    top_daily_budget: int = Field(
        0,
        ge=0,
        le=10**10,
        description="calls per China-time day for the app key; 0 = no budget",
    )
    top_timeout: float = Field(30.0, gt=0, le=600, description="read timeout, seconds")
    top_connect_timeout: float = Field(15.0, gt=0, le=600, description="connect timeout, seconds")
    top_max_attempts: int = Field(5, ge=1, le=50, description="tries per call, first included")
    top_backoff_base: float = Field(0.5, gt=0, le=60, description="first backoff, seconds")
    top_backoff_max: float = Field(30.0, gt=0, le=3600, description="longest backoff, seconds")
    top_ban_threshold: float = Field(
        60.0, ge=0, le=86_400, description="bans longer than this surface as RateLimited, seconds"
    )

    # --- batching
    batch_size: int = Field(20, ge=1, le=1000, description="ids per alibaba.wdk.order.get call")
    concurrency: int = Field(4, ge=1, le=256, description="platform calls in flight per process")

    # --- the queue and the worker
    claim_size: int = Field(
        0,
        ge=0,
        le=100_000,
        description="ids claimed per batch; 0 = batch_size x concurrency, or 800 when the quota "
        "allows 2,000 orders/s or more (top_qps x batch_size)",
    )
    lanes: int = Field(4, ge=1, le=32, description="batches in flight per process")
    normalize_processes: int = Field(
        2,
        ge=0,
        le=32,
        description="processes normalizing orders off the loading process; 0 = in a thread",
    )
    lease_seconds: float = Field(300.0, ge=5, le=86_400, description="claim lease, seconds")
    max_attempts: int = Field(6, ge=1, le=100, description="failed fetches of an id before dead")
    retry_base_seconds: float = Field(
        30.0, gt=0, le=86_400, description="first retry delay of a failed id, seconds"
    )
    retry_max_seconds: float = Field(
        3600.0, gt=0, le=7 * 86_400, description="longest retry delay of a failed id, seconds"
    )
    not_found_checks: int = Field(
        3, ge=1, le=100, description="times an id is asked for before it stays not_found"
    )
    not_found_delay_seconds: float = Field(
        600.0, ge=0, le=7 * 86_400, description="first re-check of a not-found id, seconds"
    )
    poll_seconds: float = Field(5.0, gt=0, le=3600, description="worker: queue drain interval")
    refresh_interval_seconds: float = Field(
        300.0, gt=0, le=86_400, description="worker: how often open orders are re-enqueued"
    )
    refresh_after_seconds: float = Field(
        3600.0, ge=0, le=30 * 86_400, description="worker: re-fetch open orders synced before"
    )
    shutdown_grace_seconds: float = Field(
        30.0,
        ge=0,
        le=3600,
        description="on SIGTERM/SIGINT, how long batches in flight may finish before their ids "
        "are released",
    )
    credentials_retry_max_seconds: float = Field(
        300.0,
        ge=15,
        le=86_400,
        description="worker: longest wait between two tries of rejected credentials, seconds",
    )
    final_statuses: str = Field(
        "SUCCESS,CLOSED,CANCELLED,CANCELED,REFUNDED,FINISHED",
        description="wdk order_status values that are final (comma-separated)",
    )

    # --- retention (etl prune, and the worker every prune_interval_seconds)
    keep_queue_days: float = Field(
        90.0,
        ge=0,
        le=36_500,
        description="days finished queue rows (done, not_found with no re-check left, dead) are "
        "kept after they finished; 0 = forever",
    )
    keep_archive_days: float = Field(
        400.0,
        ge=0,
        le=36_500,
        description="days a superseded order version is kept in order_archive after a newer "
        "one arrived (the current version is never pruned); 0 = forever",
    )
    keep_runs_days: float = Field(
        400.0, ge=0, le=36_500, description="days ended runs are kept in sync_runs; 0 = forever"
    )
    prune_interval_seconds: float = Field(
        3600.0,
        ge=0,
        le=7 * 86_400,
        description="worker: how often it prunes and creates archive partitions ahead; 0 = never",
    )

    # --- the platform's message service (TMC)
    tmc_enabled: bool = Field(
        False, description="worker: pull the message service continuously (etl tmc pull)"
    )
    tmc_group_name: str = Field(
        "default", min_length=1, max_length=64, description="TMC group (用户分组) to consume"
    )
    tmc_quantity: int = Field(100, ge=10, le=200, description="TMC messages per consume call")
    tmc_idle_seconds: float = Field(
        1.0, ge=0.1, le=3600, description="wait after a consume call that returned nothing"
    )
    tmc_fetch_slack_seconds: float = Field(
        2.0,
        ge=0,
        le=3600,
        description="a stored order counts as newer than a message only when fetched this long "
        "after its pub_time (pub_time has 1 s resolution; clocks differ)",
    )

    # --- logging
    log_format: LogFormat = Field("text", description="text or json (one object per line)")
    log_level: LogLevel = Field("INFO", description="DEBUG, INFO, WARNING or ERROR")

    @field_validator("database_url")
    @classmethod
    def _database_url_parses(cls, value: SecretStr | None) -> SecretStr | None:
        # Validated and re-encoded once here, so every later reader (SQLAlchemy, libpq, redaction)
        # splits it the same way; the message never quotes the URL.
        if value is None:
            return None
        return SecretStr(dburl.normalize(value.get_secret_value()))

    def final_status_list(self) -> list[str]:
        return [x.strip() for x in self.final_statuses.split(",") if x.strip()]

    def effective_claim_size(self) -> int:
        """``claim_size``, or by default one wave of calls (batch_size x concurrency) — unless
        the quota allows more orders a second than a process loads (top_qps x batch_size >=
        BIG_QUOTA_ORDERS): the machine is then the limit, and a batch's fixed costs (claim,
        hash lookup, COPY set-up, commit) are shared by more orders (measured, uncapped
        backfill, 2 cores: 800-id batches load ~1.15x as fast as 400-id ones). Under a cap
        that binds, bigger batches gain nothing, and a batch in flight takes longer to finish
        at a SIGTERM."""
        if self.claim_size:
            return self.claim_size
        wave = self.batch_size * self.concurrency
        if self.top_qps * self.batch_size < BIG_QUOTA_ORDERS:
            return wave
        return max(wave, BIG_QUOTA_CLAIM // self.batch_size * self.batch_size)  # whole calls

    def secrets(self) -> list[str]:
        """The secret values, for log redaction (never print these)."""
        values = [self.top_app_secret.get_secret_value(), self.top_session.get_secret_value()]
        if self.database_url is not None:
            url = self.database_url.get_secret_value()
            values.append(url)
            password = dburl.password(url)
            if password:
                values += [password, quote(password, safe="")]
        return [v for v in values if v]

    def database_url_redacted(self) -> str | None:
        if self.database_url is None:
            return None
        return redact_url(self.database_url.get_secret_value())


SECRET_FIELDS = frozenset(
    name for name, f in Settings.model_fields.items() if "SecretStr" in str(f.annotation)
)
FIELD_NAMES = tuple(Settings.model_fields)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def cli_flag(field: str) -> str:
    return "--" + field.replace("_", "-")


def redact_url(url: str) -> str:
    """``postgresql://u:p@ss@h/db`` → ``postgresql://u:***@h/db`` (the URL is parsed, never
    cut at its first ``@``)."""
    return dburl.redact(url)


@dataclass(frozen=True)
class _Value:
    value: Any
    source: str


def _read_config_file(path: Path, explicit: bool) -> dict[str, _Value]:
    if not path.exists():
        if explicit:
            raise errors.ConfigError(f"config file {path} does not exist")
        return {}
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise errors.ConfigError(f"config file {path} cannot be read: {exc}") from exc
    unknown = sorted(set(data) - set(FIELD_NAMES))
    if unknown:
        raise errors.ConfigError(
            f"config file {path}: unknown setting(s) {', '.join(unknown)}; "
            f"known: {', '.join(FIELD_NAMES)}"
        )
    return {k: _Value(v, f"{k} in {path}") for k, v in data.items()}


def _read_env(env: Mapping[str, str]) -> dict[str, _Value]:
    out: dict[str, _Value] = {}
    for field in FIELD_NAMES:
        raw = env.get(env_name(field))
        if raw is not None and raw.strip() != "":
            out[field] = _Value(raw.strip(), env_name(field))
    return out


# ETL_* variables that are not settings but mean something to etl.
ENV_NOT_SETTINGS = frozenset({"ETL_CONFIG"})


def unknown_env(env: Mapping[str, str] | None = None) -> list[str]:
    """A warning for each ``ETL_*`` environment variable that is not a setting (a misspelling
    would otherwise be silently ignored), naming the closest real one."""
    env = os.environ if env is None else env
    known = {env_name(f) for f in FIELD_NAMES} | ENV_NOT_SETTINGS
    out = []
    for name in sorted(k for k in env if k.upper().startswith(ENV_PREFIX) and k not in known):
        close = difflib.get_close_matches(name.upper(), sorted(known), n=1, cutoff=0.6)
        hint = f"did you mean {close[0]}?" if close else "see `etl --help`"
        out.append(f"{name} is not an etl setting and is ignored; {hint}")
    return out


def _describe(field: str, source: str, value: Any, message: str) -> str:
    shown = "(hidden)" if field in SECRET_FIELDS else repr(value)
    return f"{source}={shown}: {message}"


def load_settings(
    cli: Mapping[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
    config_path: Path | str | None = None,
) -> Settings:
    """Merge defaults < config file < environment < ``cli`` and validate the result.

    Raises :class:`errors.ConfigError` naming every bad setting, where it came from and what is
    wrong with it.
    """
    env = os.environ if env is None else env
    explicit = config_path is not None or bool(env.get("ETL_CONFIG", "").strip())
    path = Path(config_path or env.get("ETL_CONFIG", "").strip() or DEFAULT_CONFIG_PATH)
    merged = _read_config_file(path, explicit)
    merged.update(_read_env(env))
    for field, value in (cli or {}).items():
        if field not in FIELD_NAMES:
            raise errors.ConfigError(f"unknown setting {field!r}")
        if value is not None:
            merged[field] = _Value(value, cli_flag(field))
    try:
        return Settings.model_validate({k: v.value for k, v in merged.items()})
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False, include_input=False):
            field = str(err["loc"][0]) if err["loc"] else "?"
            given = merged.get(field)
            source = given.source if given else f"{field} (default)"
            problems.append(_describe(field, source, given.value if given else None, err["msg"]))
        raise errors.ConfigError("invalid setting: " + "; ".join(problems)) from None
