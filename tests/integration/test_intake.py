"""Ids streamed into the queue: chunk by chunk in one transaction (enqueue), or read whole then
fed chunk by chunk (backfill); a bad line queues nothing."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine

from etl import errors, intake
from etl.db import backfills
from tests.helpers import rows


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


def _begin(engine: Engine, spooled: intake.Spooled) -> tuple[int, bool, datetime]:
    with engine.begin() as c:
        got = spooled.intake
        return backfills.begin(c, "wdk", "biz", "f.txt", got.fingerprint, got.ids)


def _states(engine: Engine, backfill_id: int) -> dict[str, int]:
    """How many of the backfill's ids are in each queue state."""
    found = rows(
        engine,
        "SELECT q.state, count(*) FROM backfill_ids b JOIN sync_queue q ON q.id = b.queue_id "
        "WHERE b.backfill_id = :b GROUP BY q.state",
        b=backfill_id,
    )
    return {str(state): int(n) for state, n in found}


def test_a_backfill_reads_its_whole_input_before_writing_anything(engine: Engine) -> None:
    with pytest.raises(errors.InputError) as info:
        intake.read_ids("wdk", "biz", _lines(5_000, bad_at=4_321), "f.txt", chunk_size=1_000)
    assert "f.txt: line 4322" in str(info.value)
    assert "nothing was enqueued" in str(info.value)
    with intake.read_ids("wdk", "biz", _lines(5_000), "f.txt", chunk_size=1_000) as spooled:
        assert (spooled.intake.ids, spooled.intake.lines) == (5_000, 5_000)
        assert _count(engine) == 0  # read, checked, fingerprinted: nothing queued yet
        assert [len(keys) for keys in spooled.chunks(2_000)] == [2_000, 2_000, 1_000]
        assert [k for keys in spooled.chunks(2_000) for k in keys] == list(_lines(5_000))


def test_the_same_ids_again_resume_the_same_backfill(engine: Engine) -> None:
    ids_of = []
    for _ in range(2):
        with intake.read_ids("wdk", "biz", _lines(2_500), "f.txt") as spooled:
            backfill_id, resumed, since = _begin(engine, spooled)
            fed = intake.feed(
                engine, backfill_id, "wdk", "biz", spooled, since=since, chunk_size=700
            )
        assert (fed.complete, fed.finished) == (True, 0)
        ids_of.append((backfill_id, resumed))
    assert ids_of[1] == (ids_of[0][0], True)
    assert _states(engine, ids_of[0][0]) == {"pending": 2_500}
    with engine.begin() as c:
        assert c.execute(sa.text("SELECT count(*), sum(ids) FROM backfills")).one() == (1, 2_500)


def test_feeding_commits_chunk_by_chunk_and_a_stopped_feed_resumes(engine: Engine) -> None:
    """A drain running meanwhile sees each chunk once it is committed; a feed stopped halfway
    (a signal) leaves what it committed, and the same input again completes the backfill."""
    seen: list[int] = []
    with intake.read_ids("wdk", "biz", _lines(3_000), "f.txt") as spooled:
        backfill_id, resumed, since = _begin(engine, spooled)
        assert not resumed

        def stopped() -> bool:
            seen.append(_states(engine, backfill_id).get("pending", 0))  # another connection
            return len(seen) == 3

        fed = intake.feed(
            engine,
            backfill_id,
            "wdk",
            "biz",
            spooled,
            since=since,
            chunk_size=1_000,
            stopped=stopped,
        )
    assert not fed.complete
    assert seen == [0, 1_000, 2_000]
    assert _states(engine, backfill_id) == {"pending": 2_000}
    # some of its ids finish, then the backfill is run again: those count as already finished
    with engine.begin() as c:
        c.execute(
            sa.text(
                "UPDATE sync_queue SET state = 'done', done_at = now() - interval '1 minute' "
                "WHERE key = ANY(:keys)"
            ),
            {"keys": list(_lines(500))},
        )
    with intake.read_ids("wdk", "biz", _lines(3_000), "f.txt") as again:
        backfill_again, resumed, since = _begin(engine, again)
        assert (backfill_again, resumed) == (backfill_id, True)
        fed = intake.feed(engine, backfill_id, "wdk", "biz", again, since=since, chunk_size=1_000)
    assert (fed.complete, fed.finished, fed.added) == (True, 500, 1_000)
    assert _states(engine, backfill_id) == {"pending": 2_500, "done": 500}
    with engine.begin() as c:
        assert c.execute(sa.text("SELECT ids FROM backfills")).scalar_one() == 3_000


def test_the_first_chunk_fed_is_small_so_the_drain_starts_at_once() -> None:
    """Spooled ids come back ``first`` then ``size`` at a time, in order."""
    lines = [str(500_000_000_000_000 + i) for i in range(2_600)]
    with intake.read_ids("wdk", "biz", iter(lines), "f.txt") as spooled:
        sizes = [len(c) for c in spooled.chunks(1_000, first=100)]
        again = [k for c in spooled.chunks(1_000, first=100) for k in c]
    assert sizes == [100, 1_000, 1_000, 500]
    assert again == lines
    with intake.read_ids("wdk", "biz", iter(lines), "f.txt") as spooled:
        assert [len(c) for c in spooled.chunks(1_000)] == [1_000, 1_000, 600]
