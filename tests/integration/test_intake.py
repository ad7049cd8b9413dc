"""Ids streamed into the queue: chunk by chunk in one transaction; a bad line queues nothing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl import errors, intake
from etl.db import backfills
from etl.db import engine as db_engine
from etl.settings import load_settings


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    e = db_engine.create_engine(load_settings(env={"ETL_CONFIG": ""}), db_url)
    yield e
    e.dispose()


def _count(engine: Engine) -> int:
    with engine.begin() as c:
        return int(c.execute(sa.text("SELECT count(*) FROM sync_queue")).scalar_one())


def _lines(n: int, bad_at: int | None = None) -> Iterator[str]:
    for i in range(n):
        yield "not-an-id" if i == bad_at else str(500_000_000_000_000 + i)


def test_a_bad_line_late_in_a_long_input_queues_nothing(engine: Engine) -> None:
    with pytest.raises(errors.InputError) as info, engine.begin() as c:
        intake.queue_ids(c, "wdk", "biz", _lines(5_000, bad_at=4_321), "f.txt", chunk_size=1_000)
    assert "f.txt: line 4322" in str(info.value)
    assert "nothing was enqueued" in str(info.value)
    assert _count(engine) == 0  # the chunks already written were rolled back


def test_skip_invalid_queues_the_rest_and_reports_progress(engine: Engine) -> None:
    seen: list[int] = []
    intake.PROGRESS_SECONDS, saved = 0.0, intake.PROGRESS_SECONDS
    try:
        with engine.begin() as c:
            got = intake.queue_ids(
                c,
                "wdk",
                "biz",
                _lines(5_000, bad_at=10),
                "f.txt",
                skip_invalid=True,
                chunk_size=1_000,
                progress=lambda g: seen.append(g.ids),
            )
    finally:
        intake.PROGRESS_SECONDS = saved
    assert (got.ids, got.added, got.bad_lines, got.lines) == (4_999, 4_999, 1, 5_000)
    assert _count(engine) == 4_999
    assert seen == sorted(seen)
    assert len(seen) >= 4


def test_the_same_ids_again_resume_the_same_backfill(engine: Engine) -> None:
    ids_of = []
    for _ in range(2):
        with engine.begin() as c:
            b = backfills.begin(c, "wdk", "biz", "f.txt")
            got = intake.queue_ids(c, "wdk", "biz", _lines(2_500), "f.txt", backfill=b)
            ids_of.append(backfills.finish(c, b, got.fingerprint))
    assert ids_of[1] == (ids_of[0][0], True)
    with engine.begin() as c:
        assert backfills.states(c, ids_of[0][0]) == {"pending": 2_500}
        assert c.execute(sa.text("SELECT count(*) FROM backfills")).scalar_one() == 1
