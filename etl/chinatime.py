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


def seconds_to_midnight(now: datetime | None = None) -> float:
    """Seconds until the next 00:00 China time (when the platform's daily quotas reset)."""
    moment = (now or datetime.now(CHINA)).astimezone(CHINA)
    midnight = (moment + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0)
    return (midnight - moment).total_seconds()


def display(value: datetime | None) -> str:
    """An instant for a person: China time to the second, with the offset."""
    if value is None:
        return ""
    return value.astimezone(CHINA).strftime("%Y-%m-%d %H:%M:%S%z").replace("+0800", "+08:00")
