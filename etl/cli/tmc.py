"""The platform's message service (TMC): pull the subscribed topics into the queue."""

from __future__ import annotations

import sys
from typing import Any

import click

from etl import errors
from etl.cli.base import (
    EXIT_BANNED,
    EXIT_CREDENTIALS,
    EXIT_OK,
    State,
    handle_errors,
    main,
    pass_state,
)


@main.group()
def tmc() -> None:
    """The platform's message service: which orders changed (README: The message service)."""


@tmc.command("pull")
@pass_state
@handle_errors
def pull(state: State, /) -> None:
    """Consume the configured group until it is empty, queue the orders the messages name and
    confirm them (after the queueing committed). Exit 0 when drained, 3 on a long ban, 4 when
    the platform rejects the credentials. `etl sync` then fetches what was queued."""
    import asyncio

    from etl import app
    from etl.db import runs
    from etl.tmc.consumer import TmcConsumer

    settings = state.settings

    async def run() -> tuple[Any, str, int]:
        stop = app.stop_on_signals(app.Stopping(settings.shutdown_grace_seconds)).stop
        with app.database(settings) as engine:
            async with (
                app.run_record(engine, "tmc") as run_id,
                app.top_client(settings, engine, "tmc") as client,
            ):
                consumer = TmcConsumer(settings, engine, client)
                status, error, code = "ok", None, EXIT_OK
                try:
                    await consumer.drain(stop)
                    if stop.is_set():
                        status = "interrupted"
                except errors.RateLimited as exc:
                    status, error, code = "failed", str(exc), EXIT_BANNED
                except errors.CredentialsRejected as exc:
                    status, error, code = "failed", exc.hint(), EXIT_CREDENTIALS
                except BaseException as exc:
                    status, error = "failed", f"{exc.__class__.__name__}: {exc}"
                    raise
                finally:
                    counters = runs.RunCounters(
                        api_calls=client.stats.calls,
                        retries=client.stats.retries,
                        bans=client.stats.bans,
                        details=consumer.stats.details(),
                    )
                    with engine.begin() as conn:
                        runs.finish(conn, run_id, counters, status, error)
                return consumer.stats, error or status, code

    stats, note, code = asyncio.run(run())
    unhandled = ", ".join(f"{t} {n}" for t, n in sorted(stats.unhandled.items())) or "none"
    click.echo(
        f"tmc pull {note if code == EXIT_OK else 'stopped'}: {stats.messages} messages in "
        f"{stats.consume_calls} consume calls; queued {stats.queued}, already fresh "
        f"{stats.skipped_stale}, unreadable {stats.unreadable}, confirmed {stats.confirmed}; "
        f"other topics: {unhandled}"
    )
    if code != EXIT_OK:
        click.echo(f"etl: error: {note}", err=True)
    sys.exit(code)


@tmc.command("unreadable")
@click.option("--limit", default=20, show_default=True)
@pass_state
@handle_errors
def unreadable(state: State, /, limit: int) -> None:
    """List messages whose content could not be read (kept in tmc_unreadable, confirmed)."""
    from etl import app
    from etl.db import tmc as tmc_db

    with app.database(state.settings) as engine, engine.begin() as conn:
        rows = tmc_db.unreadable(conn, limit)
    if not rows:
        click.echo("no unreadable messages")
        return
    for r in rows:
        click.echo(
            f"{r['received_at'].isoformat()}\t{r['message_id']}\t{r['topic']}\t{r['reason']}\t"
            f"{(r['content'] or '')[:200]!r}"
        )


def status_lines(conn: Any) -> list[str]:
    """The message service's lines of `etl status`: freshness, topics, unreadable messages."""
    from etl.db import tmc as tmc_db

    topics = tmc_db.topics(conn)
    fresh = tmc_db.freshness(conn)
    bad = tmc_db.unreadable_count(conn)
    if not topics and not fresh and not bad:
        return ["TMC: no messages pulled yet"]
    lines = []
    for f in fresh:
        n = f["orders_waiting"]
        waiting = f"; {n} orders waiting for a fetch" if n else ""
        if f["orders_loaded"]:
            lines.append(
                f"TMC freshness ({f['api']}, last hour, pub_time → row): p50 {f['p50_seconds']}s, "
                f"p95 {f['p95_seconds']}s, max {f['max_seconds']}s over "
                f"{f['orders_loaded']} orders{waiting}"
            )
        else:
            lines.append(f"TMC freshness ({f['api']}): no order loaded in the last hour{waiting}")
    for t in topics:
        what = "queued" if t["handled"] else "not handled: confirmed, never fetched"
        lines.append(f"TMC topic {t['topic']}: {t['messages']} messages ({what})")
    if bad:
        lines.append(f"TMC unreadable messages: {bad} (kept and confirmed; etl tmc unreadable)")
    return lines
