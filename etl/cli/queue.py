"""Commands that fill and drain the queue: enqueue, sync, backfill, worker."""

from __future__ import annotations

import sys
from typing import Any

import click

from etl import errors
from etl.cli.base import (
    EXIT_BANNED,
    EXIT_FAILED,
    EXIT_OK,
    F,
    State,
    handle_errors,
    main,
    pass_state,
)


def _read_ids(
    api: str, id_kind: str, ids: tuple[str, ...], file: str | None, skip_invalid: bool
) -> list[str]:
    from etl import ids as id_parsing

    if file and ids:
        raise errors.InputError("give ids as arguments or with --file, not both")
    if file == "-" or ids == ("-",):
        parsed = id_parsing.parse(sys.stdin, api, id_kind, "stdin")
    elif file:
        try:
            with open(file, encoding="utf-8-sig") as fh:
                parsed = id_parsing.parse(fh, api, id_kind, file)
        except (OSError, UnicodeDecodeError) as exc:
            raise errors.InputError(f"cannot read {file}: {exc}") from exc
    else:
        parsed = id_parsing.parse(ids, api, id_kind, "argument")
    if parsed.errors and not skip_invalid:
        shown = "\n  ".join(parsed.errors[:20])
        more = f"\n  ... and {len(parsed.errors) - 20} more" if len(parsed.errors) > 20 else ""
        raise errors.InputError(
            f"{len(parsed.errors)} invalid id(s); nothing was enqueued "
            f"(--skip-invalid enqueues the valid ones):\n  {shown}{more}"
        )
    for problem in parsed.errors:
        click.echo(f"skipped: {problem}", err=True)
    if not parsed.keys:
        raise errors.InputError("no ids given")
    return parsed.keys


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
    from etl.db import queue

    keys = _read_ids(api, _kind(api, id_kind), ids, file, skip_invalid)
    with app.database(state.settings) as engine, engine.begin() as conn:
        added = queue.enqueue(conn, api, _kind(api, id_kind), keys, refresh=refresh)
    click.echo(f"enqueued {added} of {len(keys)} ids ({len(keys) - added} already queued)")


def _summary(outcome: Any) -> str:
    c = outcome.result.counters
    return (
        f"run {outcome.run_id} {outcome.status}: claimed {c.ids_claimed}, api calls {c.api_calls}"
        f" (retries {c.retries}, bans {c.bans}); orders inserted {c.orders_inserted}, "
        f"updated {c.orders_updated}, unchanged {c.orders_unchanged}, stale {c.orders_stale}; "
        f"not found {c.not_found}, failed {c.failed}"
    )


def _exit_for(outcome: Any) -> int:
    if outcome.result.fatal or outcome.result.counters.failed:
        return EXIT_FAILED
    if outcome.result.banned_until:
        return EXIT_BANNED
    return EXIT_OK


@main.command()
@pass_state
@handle_errors
def sync(state: State, /) -> None:
    """Drain the queue once and exit (for cron). Exit 1 if any id failed, 3 if banned."""
    import asyncio

    from etl import app

    async def run() -> Any:
        stop = asyncio.Event()
        app.stop_on_signals(stop)
        with app.database(state.settings) as engine:
            return await app.drain_once(state.settings, engine, "sync", stop=stop)

    outcome = asyncio.run(run())
    click.echo(_summary(outcome))
    if outcome.result.banned_until:
        click.echo(f"banned until {outcome.result.banned_until.isoformat()}; work left queued")
    sys.exit(_exit_for(outcome))


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
) -> None:
    """Enqueue the ids of --file and drain them with a progress bar.

    Re-running the same command resumes: ids already done are skipped (--refresh fetches them
    again). Ctrl-C or SIGTERM stops after the batches in flight; nothing is lost. Exit 1 if any
    id ended failed, 3 if a long ban stopped it.
    """
    import asyncio

    from etl import app
    from etl.db import queue

    if not file:
        raise errors.InputError("backfill needs --file (or --file - for stdin)")
    kind = _kind(api, id_kind)
    keys = _read_ids(api, kind, (), file, skip_invalid)

    async def run() -> Any:
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            Progress,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )

        stop = asyncio.Event()
        app.stop_on_signals(stop)
        with app.database(state.settings) as engine:
            with engine.begin() as conn:
                queue.enqueue(conn, api, kind, keys, refresh=refresh, priority=queue.PRIORITY_BULK)
                states = queue.states_of(conn, api, kind, keys)
            finished = sum(states.get(s, 0) for s in queue.FINAL)
            todo = len(keys) - finished
            click.echo(f"{len(keys)} ids: {finished} already finished, {todo} to fetch")
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
            with Progress(*columns, disable=not sys.stderr.isatty()) as bar:
                task = bar.add_task("backfill", total=todo, rate=0.0, errors=0)
                done = [0, 0]

                def progress(settled: int, failed: int) -> None:
                    done[0] += settled
                    done[1] += failed
                    rate = done[0] / max(0.001, time.monotonic() - started)
                    bar.update(task, completed=min(done[0], todo), rate=rate, errors=done[1])

                return await app.drain_once(
                    state.settings,
                    engine,
                    "backfill",
                    stop=stop,
                    progress=progress,
                    wait_for_retries=wait,
                )

    import time

    outcome = asyncio.run(run())
    click.echo(_summary(outcome))
    if outcome.status == "interrupted":
        click.echo("interrupted: run the same command again to resume")
    sys.exit(_exit_for(outcome))


@main.command()
@click.option("--metrics-port", type=int, default=None, help="serve Prometheus metrics on PORT")
@pass_state
@handle_errors
def worker(state: State, /, metrics_port: int | None) -> None:
    """The long-running scheduled job: drain the queue every poll_seconds, re-enqueue open orders,
    reclaim expired leases. SIGTERM stops it after the batches in flight."""
    import asyncio

    from etl import app, metrics
    from etl.scheduler import Worker

    if metrics_port:
        metrics.serve(metrics_port)

    async def run() -> str | None:
        with app.database(state.settings) as engine:
            async with (
                app.run_record(engine, "worker") as run_id,
                app.top_client(state.settings, engine, "worker") as client,
            ):
                w = Worker(state.settings, engine, client, run_id)
                app.stop_on_signals(w.stop)
                try:
                    await w.run()
                finally:
                    from etl.db import runs

                    status = "failed" if w.fatal else "ok"
                    with engine.begin() as conn:
                        runs.finish(conn, run_id, w.syncer.counters, status, w.fatal)
                return w.fatal

    fatal = asyncio.run(run())
    if fatal:
        click.echo(f"etl: worker stopped: {fatal}", err=True)
        sys.exit(EXIT_FAILED)
