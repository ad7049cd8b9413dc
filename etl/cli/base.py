"""The ``etl`` command group, its global options, per-invocation state and error mapping.

Every setting (except secrets, which come only from the environment or the config file) has a
global flag, e.g. ``etl --top-qps 5 sync``; ``--help`` shows each flag's environment variable.
"""

from __future__ import annotations

import functools
import logging
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click

from etl import errors, logs
from etl.settings import (
    FIELD_NAMES,
    SECRET_FIELDS,
    Settings,
    env_name,
    load_settings,
    unknown_env,
)

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("etl.settings")

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, but something in it failed (ids failed, a check failed)
EXIT_USAGE = 2  # bad input or configuration: nothing was done
EXIT_BANNED = 3  # a long flow-control ban (or the daily budget) stopped it; work stays queued
EXIT_CREDENTIALS = 4  # the platform rejected the credentials; the message names the setting


class State:
    """Per-invocation state: the CLI-level setting overrides and the settings built from them."""

    def __init__(self, config: Path | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    def secrets(self) -> list[str]:
        """The secret values of the settings, if they were loaded (for scrubbing messages)."""
        return self._settings.secrets() if self._settings is not None else []

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.overrides, config_path=self.config)
            logs.configure(
                self._settings.log_level, self._settings.log_format, self._settings.secrets()
            )
            for warning in unknown_env():
                log.warning(warning)
        return self._settings


def _setting_options(f: F) -> F:
    from etl.settings import Settings as S

    for field in reversed(FIELD_NAMES):
        if field in SECRET_FIELDS:
            continue
        info = S.model_fields[field]
        desc = info.description or field.replace("_", " ")
        f = click.option(
            "--" + field.replace("_", "-"),
            field,
            default=None,
            metavar="VALUE",
            help=f"{desc} [env: {env_name(field)}]",
        )(f)
    return f


def _fail(exc: BaseException, code: int) -> NoReturn:
    """Print ``exc`` as one line, every known secret masked (defence in depth), and exit."""
    message = str(exc)
    ctx = click.get_current_context(silent=True)
    state = ctx.find_object(State) if ctx is not None else None
    for secret in sorted(state.secrets() if state else [], key=len, reverse=True):
        if len(secret) >= 4:
            message = message.replace(secret, "***")
    click.echo(f"etl: error: {message}", err=True)
    sys.exit(code)


def handle_errors(f: F) -> F:
    """Print an EtlError as one clear line and exit non-zero; never a traceback for our errors."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (errors.ConfigError, errors.InputError) as exc:
            _fail(exc, EXIT_USAGE)
        except errors.EtlError as exc:
            _fail(exc, EXIT_FAILED)
        except Exception as exc:
            from etl.db.engine import translate

            translated = translate(exc)
            if translated is None:
                raise
            _fail(translated, EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(package_name="etl", prog_name="etl", message="%(prog)s %(version)s")
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML config file [env: ETL_CONFIG; default: config/etl.toml if present]",
)
@_setting_options
@click.pass_context
def main(ctx: click.Context, /, config: Path | None, **overrides: Any) -> None:
    """Sync Taobao Open Platform new-retail orders into PostgreSQL."""
    ctx.obj = State(config, {k: v for k, v in overrides.items() if v is not None})


pass_state = click.make_pass_decorator(State)
