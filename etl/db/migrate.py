"""Bring a database to the newest schema with Alembic (the scripts ``alembic upgrade`` runs)."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory

from etl import errors
from etl.db import engine as db_engine

_REPO_ROOT = Path(__file__).resolve().parents[2]


def alembic_config(url: str) -> Config:
    """An Alembic config for ``url`` that finds ``alembic.ini`` next to the package or in cwd."""
    for root in (_REPO_ROOT, Path.cwd()):
        ini = root / "alembic.ini"
        if ini.exists() and (root / "migrations" / "env.py").exists():
            cfg = Config(str(ini))
            cfg.attributes["etl_url"] = url
            cfg.attributes["etl_quiet"] = True
            return cfg
    raise errors.ConfigError(
        "cannot find alembic.ini and migrations/: run etl from the project directory "
        "or install it in editable mode (pip install -e .)"
    )


def head_revision(url: str) -> str | None:
    return ScriptDirectory.from_config(alembic_config(url)).get_current_head()


def current_revision(url: str) -> str | None:
    engine = sa.create_engine(db_engine.sqlalchemy_url(url), poolclass=sa.NullPool)
    try:
        with engine.connect() as conn:
            return MigrationContext.configure(conn).get_current_revision()
    finally:
        engine.dispose()


def upgrade(url: str, revision: str = "head") -> tuple[str | None, str | None]:
    """Upgrade to ``revision``; returns (revision before, revision after).

    Concurrent upgrades serialise on an advisory lock (migrations/env.py); "before" is what this
    caller found once it held the lock, so only one of them reports having migrated.
    """
    cfg = alembic_config(url)
    command.upgrade(cfg, revision)
    before = cfg.attributes.get("etl_before")
    return (str(before) if before else None), current_revision(url)


def downgrade(url: str, revision: str) -> None:
    command.downgrade(alembic_config(url), revision)
