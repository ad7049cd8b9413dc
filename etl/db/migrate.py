"""Bring a database to the newest schema with Alembic (the scripts ``alembic upgrade`` runs)."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from etl import errors
from etl.db import engine as db_engine

_REPO_ROOT = Path(__file__).resolve().parents[2]


def script_location() -> Path:
    """The migration scripts: ``etl/_migrations`` in an installed package (setup.py maps the
    top-level ``migrations/`` there), else ``migrations/`` of the source checkout (an editable
    install made before that mapping existed)."""
    spec = importlib.util.find_spec("etl._migrations")
    candidates = [Path(p) for p in (spec.submodule_search_locations or [])] if spec else []
    candidates.append(_REPO_ROOT / "migrations")
    for location in candidates:
        if (location / "env.py").is_file() and (location / "versions").is_dir():
            return location
    raise errors.ConfigError(
        "the etl package has no migrations (etl/_migrations is missing): reinstall it"
    )


def alembic_config(url: str, reader_role: str | None = None) -> Config:
    """An Alembic config for ``url``, built here rather than read from ``alembic.ini`` so that
    ``etl migrate`` works from any directory. ``reader_role`` is granted read access after the
    upgrade (migrations/env.py)."""
    cfg = Config()
    cfg.set_main_option("script_location", str(script_location()))
    cfg.set_main_option("path_separator", "os")
    cfg.attributes["etl_url"] = url
    cfg.attributes["etl_quiet"] = True
    cfg.attributes["etl_reader_role"] = reader_role
    return cfg


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    engine = sa.create_engine(db_engine.sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(
    url: str, revision: str = "head", reader_role: str | None = None
) -> tuple[str | None, str | None]:
    """Upgrade to ``revision``; returns (revision before, revision after).

    Concurrent upgrades serialise on an advisory lock (migrations/env.py); "before" is what this
    caller found once it held the lock, so only one of them reports having migrated.
    """
    cfg = alembic_config(url, reader_role)
    command.upgrade(cfg, revision)
    before = cfg.attributes.get("etl_before")
    return (str(before) if before else None), current_revision(url)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
