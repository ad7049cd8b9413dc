"""Least privilege for the people downstream: a role that can read the order tables and the
report views, and nothing else (no writes; no sync_queue, sync_runs, top_bans).

Applied by ``etl grant-reader ROLE`` and, with the ``reader_role`` setting, after every
``etl migrate`` / ``alembic upgrade`` (migrations/env.py) so that views a migration adds are
covered. No ``ALTER DEFAULT PRIVILEGES``: it would hand the role every future table, internal
ones included; re-applying this allow-list after each upgrade is what keeps it least privilege.
"""

from __future__ import annotations

from dataclasses import dataclass

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from etl import errors
from etl.db.tables import READABLE


@dataclass(frozen=True)
class Granted:
    role: str
    tables: list[str]  # SELECT granted
    views: list[str]  # SELECT granted
    refused: list[str]  # every privilege revoked


def _ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def role_exists(conn: Connection, role: str) -> bool:
    found = conn.execute(sa.text("SELECT 1 FROM pg_roles WHERE rolname = :r"), {"r": role})
    return found.first() is not None


def check_role(conn: Connection, role: str) -> None:
    """ConfigError unless ``role`` exists (etl does not create login roles: they need a
    password, and passwords do not belong on a command line)."""
    if not role_exists(conn, role):
        raise errors.ConfigError(
            f"reader role {role!r} does not exist; create it first, e.g. "
            f"CREATE ROLE {_ident(role)} LOGIN PASSWORD '...'"
        )


def grant_reader(conn: Connection, role: str) -> Granted:
    """Grant ``role`` SELECT on the readable tables and every view of the current schema, and
    revoke everything else it may have been given there (inside the caller's transaction)."""
    check_role(conn, role)
    who = _ident(role)
    schema, database = conn.execute(sa.text("SELECT current_schema(), current_database()")).one()
    relations = conn.execute(
        sa.text(
            "SELECT c.relname, c.relkind FROM pg_class c "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = current_schema() AND c.relkind IN ('r', 'p', 'v', 'm') "
            "ORDER BY c.relname"
        )
    ).all()
    readable = {t.name for t in READABLE}
    tables: list[str] = []
    views: list[str] = []
    refused: list[str] = []
    conn.exec_driver_sql(f"GRANT CONNECT ON DATABASE {_ident(database)} TO {who}")
    conn.exec_driver_sql(f"GRANT USAGE ON SCHEMA {_ident(schema)} TO {who}")
    for name, kind in relations:
        target = f"{_ident(schema)}.{_ident(name)}"
        conn.exec_driver_sql(f"REVOKE ALL ON TABLE {target} FROM {who}")
        if kind in ("v", "m"):
            views.append(name)
        elif name in readable:
            tables.append(name)
        else:
            refused.append(name)
            continue
        conn.exec_driver_sql(f"GRANT SELECT ON TABLE {target} TO {who}")
    conn.exec_driver_sql(f"REVOKE ALL ON ALL SEQUENCES IN SCHEMA {_ident(schema)} FROM {who}")
    return Granted(role, tables, views, refused)
