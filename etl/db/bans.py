"""Flow-control bans longer than the threshold, recorded so every worker (and `etl status`)
knows an app key is banned and until when."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from etl.db.tables import top_bans


def record(
    conn: Connection, app_key: str, until: datetime, sub_code: str | None, message: str | None
) -> None:
    stmt = insert(top_bans).values(
        app_key=app_key, until=until, sub_code=sub_code, message=message, updated_at=sa.func.now()
    )
    conn.execute(
        stmt.on_conflict_do_update(
            index_elements=["app_key"],
            set_={
                "until": sa.func.greatest(top_bans.c.until, stmt.excluded.until),
                # A caller that only saw the ban in this process knows no sub_code: keep ours.
                "sub_code": sa.func.coalesce(stmt.excluded.sub_code, top_bans.c.sub_code),
                "message": sa.case(
                    (stmt.excluded.sub_code.is_(None), top_bans.c.message),
                    else_=stmt.excluded.message,
                ),
                "updated_at": sa.func.now(),
            },
        )
    )


def active(conn: Connection, app_key: str) -> datetime | None:
    """When the current ban of ``app_key`` ends, or None."""
    value = conn.execute(
        sa.select(top_bans.c.until).where(
            top_bans.c.app_key == app_key, top_bans.c.until > sa.func.now()
        )
    ).scalar_one_or_none()
    return value if isinstance(value, datetime) else None


def all_active(conn: Connection) -> list[dict[str, Any]]:
    rows = conn.execute(
        sa.select(top_bans).where(top_bans.c.until > sa.func.now()).order_by(top_bans.c.app_key)
    ).mappings()
    return [dict(r) for r in rows]
