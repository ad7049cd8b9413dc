"""China time (GMT+8, no daylight saving since 1991), used by the protocol and the data."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone, tzinfo

TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


def _china() -> tzinfo:
    try:
        from zoneinfo import ZoneInfo

        return ZoneInfo("Asia/Shanghai")
    except Exception:  # no tz database on this host (slim images): the fixed offset is exact
        return timezone(timedelta(hours=8), "Asia/Shanghai")


CHINA = _china()


def now_text(now: datetime | None = None) -> str:
    """``yyyy-MM-dd HH:mm:ss`` in China time, whatever the host's time zone."""
    moment = now or datetime.now(CHINA)
    return moment.astimezone(CHINA).strftime(TIME_FORMAT)


def parse(text: str) -> datetime:
    """``yyyy-MM-dd HH:mm:ss`` (China time, no offset) → an aware datetime."""
    return datetime.strptime(text, TIME_FORMAT).replace(tzinfo=CHINA)
