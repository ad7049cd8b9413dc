"""Credentials the platform rejected (``top_credential_holds``), shared by every process of an app
key: while a hold stands, workers send no call but one probe at a growing interval."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.engine import Connection

from etl.db.tables import top_credential_holds as holds

FIRST_RETRY_SECONDS = 15.0


@dataclass(frozen=True)
class Hold:
    app_key: str
    error_class: str | None
    setting: str | None
    message: str | None
    since: datetime
    next_try_at: datetime
    tries: int


def retry_delay(tries: int, cap: float) -> float:
    """Seconds to the next probe after ``tries`` rejected probes: 15 s doubling, capped."""
    return float(min(cap, FIRST_RETRY_SECONDS * 2 ** max(0, tries - 1)))


def record(
    conn: Connection,
    app_key: str,
    error_class: str,
    setting: str,
    message: str,
    retry_in: float,
) -> Hold:
    """Record a rejection (a new hold, or one more rejected try of a standing one)."""
    new = insert(holds).values(
        app_key=app_key,
        error_class=error_class,
        setting=setting,
        message=message,
        next_try_at=sa.func.now() + sa.func.make_interval(0, 0, 0, 0, 0, 0, retry_in),
        tries=1,
    )
    stmt = new.on_conflict_do_update(
        index_elements=["app_key"],
        set_={
            "error_class": new.excluded.error_class,
            "setting": new.excluded.setting,
            "message": new.excluded.message,
            "next_try_at": new.excluded.next_try_at,
            "tries": holds.c.tries + 1,
            "updated_at": sa.func.now(),
        },
    ).returning(*holds.c[: len(Hold.__dataclass_fields__)])
    row = conn.execute(stmt).one()
    return Hold(*row)


def get(conn: Connection, app_key: str) -> Hold | None:
    row = conn.execute(
        sa.select(*holds.c[: len(Hold.__dataclass_fields__)]).where(holds.c.app_key == app_key)
    ).one_or_none()
    return Hold(*row) if row else None


def take_try(conn: Connection, app_key: str, force: bool = False) -> bool:
    """Claim the right to send the next probe (one process at a time): True when the hold's
    next try is due (or ``force``), pushing it a minute ahead while the probe runs."""
    result = conn.execute(
        sa.update(holds)
        .where(holds.c.app_key == app_key)
        .where(sa.or_(sa.literal(force), holds.c.next_try_at <= sa.func.now()))
        .values(next_try_at=sa.func.now() + sa.text("interval '60 seconds'"))
    )
    return bool(result.rowcount)


def clear(conn: Connection, app_key: str) -> Hold | None:
    """The credentials work again: drop the hold; returns it if there was one."""
    row = conn.execute(
        sa.delete(holds)
        .where(holds.c.app_key == app_key)
        .returning(*holds.c[: len(Hold.__dataclass_fields__)])
    ).one_or_none()
    return Hold(*row) if row else None


def all_holds(conn: Connection) -> list[Hold]:
    rows = conn.execute(
        sa.select(*holds.c[: len(Hold.__dataclass_fields__)]).order_by(holds.c.app_key)
    ).all()
    return [Hold(*r) for r in rows]
