"""What the queue does with each outcome (pure decisions)."""

from __future__ import annotations

from etl.db import queue

POLICY = queue.Policy(
    max_attempts=3, retry_base=10, retry_max=25, not_found_checks=2, not_found_delay=60
)


def item(attempts: int = 0, checks: int = 0) -> queue.Item:
    return queue.Item(1, "wdk", "biz", "1", attempts, checks)


def test_done() -> None:
    assert queue._plan(queue.Outcome(item(), "done"), POLICY) == ("done", 0, 0, None)


def test_not_found_is_not_found_at_once_with_its_next_recheck() -> None:
    # Visible as not_found from the first answer (not hidden in the backlog), re-checked later.
    assert queue._plan(queue.Outcome(item(), "not_found"), POLICY) == ("not_found", 0, 1, 60.0)
    assert queue._plan(queue.Outcome(item(checks=1), "not_found"), POLICY) == (
        "not_found",
        0,
        2,
        None,
    )
    assert queue.settles(queue.Outcome(item(), "not_found"), POLICY)


def test_failed_backs_off_then_dies() -> None:
    assert queue._plan(queue.Outcome(item(), "failed"), POLICY) == ("failed", 1, 0, 10.0)
    assert queue._plan(queue.Outcome(item(attempts=1), "failed"), POLICY) == ("failed", 2, 0, 20.0)
    assert queue._plan(queue.Outcome(item(attempts=2), "failed"), POLICY) == ("dead", 3, 0, None)
    assert not queue.settles(queue.Outcome(item(), "failed"), POLICY)


def test_a_permanent_error_is_dead_at_once() -> None:
    outcome = queue.Outcome(item(), "dead", "CallerError", "isv.invalid-parameter")
    assert queue._plan(outcome, POLICY) == ("dead", 1, 0, None)
    assert queue.settles(outcome, POLICY)


def test_backoff_is_capped() -> None:
    assert POLICY.retry_delay(10) == 25
    assert POLICY.recheck_delay(3) == 240
