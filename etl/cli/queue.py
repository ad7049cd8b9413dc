"""Commands that fill and drain the queue: enqueue, sync, backfill, worker."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterable, Iterator
from typing import Any

import click

from etl import errors
from etl.cli.base import (
    EXIT_BANNED,
    EXIT_CREDENTIALS,
    EXIT_FAILED,
    EXIT_OK,
    F,
    State,
    handle_errors,
    main,
    pass_state,
)


@contextlib.contextmanager
def _lines(ids: tuple[str, ...], file: str | None) -> Iterator[tuple[Iterable[str], str]]:
    """The input's lines (read lazily) and what to call it in messages."""
    if file and ids:
        raise errors.InputError("give ids as arguments or with --file, not both")
    if file == "-" or ids == ("-",):
        yield _decoded(sys.stdin, "stdin"), "stdin"
    elif file:
        try:
            fh = open(file, encoding="utf-8-sig")  # noqa: SIM115 - closed below
        except OSError as exc:
            raise errors.InputError(f"cannot read {file}: {exc}") from exc
        with fh:
            yield _decoded(fh, file), file
    else:
        yield ids, "argument"


def _decoded(lines: Iterable[str], where: str) -> Iterator[str]:
    try:
        yield from lines
    except (OSError, UnicodeDecodeError) as exc:
        raise errors.InputError(f"cannot read {where}: {exc}") from exc


def _queue_input(
    conn: Any,
    api: str,
    id_kind: str,
    ids: tuple[str, ...],
    file: str | None,
    *,
    refresh: bool,
    skip_invalid: bool,
    priority: int = 0,
) -> Any:
    """Stream the input into the queue (in the caller's transaction); bad lines skipped are
    reported, progress on long inputs goes to stderr."""
    from etl import intake

    def progress(got: intake.Intake) -> None:
        click.echo(f"read {got.lines:,} lines: {got.ids:,} ids, {got.added:,} new", err=True)

    with _lines(ids, file) as (lines, where):
        got = intake.queue_ids(
            conn,
            api,
            id_kind,
            lines,
            where,
            refresh=refresh,
            skip_invalid=skip_invalid,
            priority=priority,
            progress=progress,
        )
    _report_skipped(got)
    return got


def _report_skipped(got: Any) -> None:
    """The bad lines skipped (--skip-invalid), on stderr."""
    for problem in got.errors:
        click.echo(f"skipped: {problem}", err=True)
    if got.bad_lines > len(got.errors):
        click.echo(f"skipped: ... and {got.bad_lines - len(got.errors)} more", err=True)


def _id_options(f: F) -> F:
    f = click.option("--skip-invalid", is_flag=True, help="enqueue the valid ids of a bad file")(f)
    f = click.option(
        "--refresh", is_flag=True, help="fetch again ids that already finished (pick up changes)"
    )(f)
    f = click.option(
        "--file",
        "-f",
        "file",
        default=None,
        metavar="PATH",
        help="one id per line ('-' = stdin); omni: user_id,order_id,out_order_id",
    )(f)
    f = click.option(
        "--id-kind",
        type=click.Choice(["biz", "tb_biz", "out_order"]),
        default="biz",
        show_default=True,
        help="wdk: which id list the ids belong to",
    )(f)
    return click.option(
        "--api", type=click.Choice(["wdk", "omni"]), default="wdk", show_default=True
    )(f)


def _kind(api: str, id_kind: str) -> str:
    return "omni" if api == "omni" else id_kind


@main.command()
@_id_options
@click.argument("ids", nargs=-1)
@pass_state
@handle_errors
def enqueue(
    state: State,
    /,
    api: str,
    id_kind: str,
    file: str | None,
    refresh: bool,
    skip_invalid: bool,
    ids: tuple[str, ...],
) -> None:
    """Queue ids to fetch: IDS as arguments, --file F, or - for stdin."""
    from etl import app

    with app.database(state.settings) as engine, engine.begin() as conn:
        got = _queue_input(
            conn,
            api,
            _kind(api, id_kind),
            ids,
            file,
            refresh=refresh,
            skip_invalid=skip_invalid,
        )
    click.echo(f"enqueued {got.added} of {got.ids} ids ({got.ids - got.added} already queued)")


def _summary(outcome: Any) -> str:
    c = outcome.result.counters
    return (
        f"run {outcome.run_id} {outcome.status}: claimed {c.ids_claimed}, api calls {c.api_calls}"
        f" (retries {c.retries}, bans {c.bans}); orders inserted {c.orders_inserted}, "
        f"updated {c.orders_updated}, unchanged {c.orders_unchanged}, stale {c.orders_stale}; "
        f"not found {c.not_found}, failed {c.failed}"
    )


def _exit_for(outcome: Any) -> int:
    """0 ok; 4 credentials rejected; 1 a fatal error or failed ids; 3 a long ban (or the daily
    budget) left work queued."""
    result = outcome.result
    if result.credentials is not None:
        return EXIT_CREDENTIALS
    if result.fatal or result.counters.failed:
        return EXIT_FAILED
    if result.banned_until:
        return EXIT_BANNED
    return EXIT_OK


def _finish(outcome: Any) -> None:
    """Print the run's summary and what stopped it; exit with its code."""
    click.echo(_summary(outcome))
    result = outcome.result
    if result.credentials is not None:
        click.echo(f"etl: error: {result.credentials.hint()}", err=True)
    elif result.banned_until:
        click.echo(f"banned until {result.banned_until.isoformat()}; work left queued")
    if outcome.status == "interrupted":
        click.echo("interrupted: run the same command again to resume")
    sys.exit(_exit_for(outcome))


@main.command()
@pass_state
@handle_errors
def sync(state: State, /) -> None:
    """Drain the queue once and exit (for cron). Exit 1 if any id failed, 3 if banned (work
    stays queued), 4 if the platform rejected the credentials."""
    import asyncio

    from etl import app

    async def run() -> Any:
        stop = app.stop_on_signals(app.Stopping(state.settings.shutdown_grace_seconds))
        with app.database(state.settings) as engine:
            return await app.drain_once(state.settings, engine, "sync", stop=stop)

    _finish(asyncio.run(run()))


@main.command()
@_id_options
@click.option(
    "--wait",
    default=120.0,
    show_default=True,
    type=float,
    metavar="SECONDS",
    help="keep going while failed ids fall due for a retry within this time",
)
@click.option(
    "--progress-seconds",
    default=10.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    metavar="SECONDS",
    help="not on a terminal: log a progress line this often",
)
@pass_state
@handle_errors
def backfill(
    state: State,
    /,
    api: str,
    id_kind: str,
    file: str | None,
    refresh: bool,
    skip_invalid: bool,
    wait: float,
    progress_seconds: float,
) -> None:
    """Enqueue the ids of --file and drain them with a progress bar.

    The file is read and checked whole first (a bad line queues nothing); its ids are then
    queued in short transactions while the first ones are already being fetched.
    Re-running the same command resumes: ids already done are skipped (--refresh fetches them
    again). Ctrl-C or SIGTERM stops after the batches in flight; nothing is lost. Exit 1 if any
    id ended failed, 3 if a long ban stopped it, 4 if the credentials were rejected.
    """
    import asyncio
    import threading
    import time

    from etl import app, intake
    from etl.cli.progress import PlainProgress
    from etl.db import backfills
    from etl.handoff import Hand
    from etl.normalize.pool import shared_normalizer

    if not file:
        raise errors.InputError("backfill needs --file (or --file - for stdin)")
    kind = _kind(api, id_kind)
    shared_normalizer(state.settings.normalize_processes).warm()  # while the ids are read

    def progress_read(got: intake.Intake) -> None:
        click.echo(f"read {got.lines:,} lines: {got.ids:,} ids", err=True)

    with _lines((), file) as (lines, where):
        spooled = intake.read_ids(
            api, kind, lines, where, skip_invalid=skip_invalid, progress=progress_read
        )
    _report_skipped(spooled.intake)

    async def run() -> Any:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        stop = app.stop_on_signals(app.Stopping(state.settings.shutdown_grace_seconds))
        halt = threading.Event()  # the drain ended: stop queueing
        hand = Hand(intake.FEED_CHUNK)  # new ids handed to the drain unqueued (etl.handoff)
        with app.database(state.settings) as engine:
            with engine.begin() as conn:
                backfill_id, resumed, since = backfills.begin(
                    conn, api, kind, file, spooled.intake.fingerprint, spooled.intake.ids
                )
            total = spooled.intake.ids
            click.echo(
                f"backfill {backfill_id}{' (resumed)' if resumed else ''}: {total} ids, "
                "fetched while they are queued"
            )
            columns = (
                TextColumn("[progress.description]{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[rate]:>7.0f} ids/s"),
                TimeElapsedColumn(),
                TimeRemainingColumn(),
                TextColumn("errors {task.fields[errors]}"),
            )
            started = time.monotonic()
            on_terminal = sys.stderr.isatty()
            plain = PlainProgress(total, progress_seconds)
            with Progress(*columns, disable=not on_terminal) as bar:
                task = bar.add_task("backfill", total=total, rate=0.0, errors=0)
                done = [0, 0]

                def progress(settled: int, failed: int) -> None:
                    done[0] += settled
                    done[1] += failed
                    rate = done[0] / max(0.001, time.monotonic() - started)
                    shown = min(done[0], plain.total)
                    bar.update(task, completed=shown, rate=rate, errors=done[1])
                    plain.update(shown, done[1])

                def queued(fut: asyncio.Future[intake.Fed]) -> None:
                    if fut.cancelled():
                        return
                    if fut.exception() is not None:
                        stop.stop.set()  # the error is raised once the batches in flight end
                        return
                    fed = fut.result()
                    if not fed.complete:
                        return
                    todo = total - fed.finished
                    plain.total = todo
                    bar.update(task, total=todo)
                    click.echo(
                        f"backfill {backfill_id}: all {total} ids queued, {fed.finished} "
                        f"already finished, {todo} to fetch"
                    )

                feeding = asyncio.ensure_future(
                    asyncio.to_thread(
                        intake.feed,
                        engine,
                        backfill_id,
                        api,
                        kind,
                        spooled,
                        since=since,
                        refresh=refresh,
                        stopped=lambda: stop.stop.is_set() or halt.is_set(),
                        hand=hand,
                    )
                )
                feeding.add_done_callback(queued)
                try:
                    async with plain.running(active=not on_terminal):
                        outcome = await app.drain_once(
                            state.settings,
                            engine,
                            "backfill",
                            stop=stop,
                            progress=progress,
                            wait_for_retries=wait,
                            backfill=backfill_id,
                            feeding=feeding,
                            hand=hand,
                        )
                finally:
                    halt.set()
                    await asyncio.wait([feeding])
                    spooled.close()
                    # ids handed over but not fetched (the drain stopped first) are queued
                    # pending; once every id was fed, the backfill is sealed
                    fed_all = not feeding.cancelled() and feeding.exception() is None
                    await asyncio.to_thread(
                        intake.give_back,
                        engine,
                        backfill_id,
                        hand,
                        seal=fed_all and feeding.result().complete,
                    )
                feeding.result()  # raise what stopped the queueing, if anything did
                return outcome

    _finish(asyncio.run(run()))


@main.command()
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus metrics on PORT")
@pass_state
@handle_errors
def worker(state: State, /, metrics_port: int | None) -> None:
    """The long-running scheduled job: drain the queue every poll_seconds, re-enqueue open orders,
    reclaim expired leases. Waits for the database if it is down. SIGTERM stops it after the
    batches in flight (at most shutdown_grace_seconds). Rejected credentials pause it (see
    `etl status`) until a retried call goes through."""
    import asyncio

    from etl import app, metrics
    from etl.db import runs
    from etl.scheduler import Worker

    if metrics_port:
        metrics.serve(metrics_port)

    async def run() -> str | None:
        stopping = app.stop_on_signals(app.Stopping(state.settings.shutdown_grace_seconds))
        engine = await app.wait_for_database(state.settings, stopping.stop)
        if engine is None:
            return None  # stopped while waiting for the database
        try:
            async with (
                app.run_record(engine, "worker") as run_id,
                app.top_client(state.settings, engine, "worker") as client,
            ):
                w = Worker(state.settings, engine, client, run_id, stopping)
                try:
                    await w.run()
                finally:
                    status = "failed" if w.fatal else "ok"
                    with engine.begin() as conn:
                        runs.finish(conn, run_id, w.syncer.counters, status, w.fatal)
                return w.fatal
        finally:
            engine.dispose()

    fatal = asyncio.run(run())
    if fatal:
        click.echo(f"etl: worker stopped: {fatal}", err=True)
        sys.exit(EXIT_FAILED)
