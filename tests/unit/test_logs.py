"""Structured logs: JSON lines with the bound context, secrets scrubbed."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from etl import logs


@pytest.fixture(autouse=True)
def _restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def _capture(fmt: str, secrets: list[str]) -> tuple[io.StringIO, logging.Logger]:
    stream = io.StringIO()
    logs.configure("DEBUG", fmt, secrets, stream)
    return stream, logging.getLogger("etl.test.logs")


def test_json_lines_carry_context_and_extras() -> None:
    stream, log = _capture("json", ["topsecret-value"])

    async def batch(n: int) -> None:
        logs.bind(run_id=7, batch=f"wdk:{n}")
        await asyncio.sleep(0)
        log.warning("loaded", extra={"request_id": f"r{n}", "note": "key=topsecret-value"})

    async def main() -> None:
        await asyncio.gather(batch(1), batch(2))

    asyncio.run(main())
    lines = [orjson.loads(line) for line in stream.getvalue().splitlines()]
    lines = [d for d in lines if d["logger"] == "etl.test.logs"]
    assert {(d["batch"], d["request_id"]) for d in lines} == {("wdk:1", "r1"), ("wdk:2", "r2")}
    assert all(d["run_id"] == 7 and d["level"] == "warning" for d in lines)
    assert "topsecret-value" not in stream.getvalue()
    assert lines[0]["note"] == "key=***"


def test_text_format_and_exceptions_are_scrubbed() -> None:
    stream, log = _capture("text", ["hunter2-secret"])
    try:
        raise ValueError("password hunter2-secret rejected")
    except ValueError:
        log.exception("failed with %s", "hunter2-secret")
    text = stream.getvalue()
    assert "failed with ***" in text
    assert "hunter2-secret" not in text
    assert "ValueError" in text


def test_an_outage_is_one_line_a_reminder_a_minute_and_one_line_back(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from etl.logs import OutageLog

    now = [0.0]
    outage = OutageLog(logging.getLogger("test.outage"), remind=60, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="test.outage"):
        for second in range(0, 130):
            now[0] = float(second)
            for _ in range(4):  # four lanes failing every second
                outage.failed(ConnectionError("connection refused\nDETAIL: more"))
        now[0] = 131.0
        outage.ok()
        outage.ok()
    messages = [r.getMessage() for r in caplog.records]
    assert messages == [
        "database unavailable: connection refused",
        "database still unavailable after 60s: connection refused",
        "database still unavailable after 120s: connection refused",
        "database is back after 131s",
    ]
