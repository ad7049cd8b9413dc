"""The ``etl`` command: parse, call, map errors to exit codes. No logic lives here.

Every setting (except secrets, which come only from the environment or the config file) has a
global flag, e.g. ``etl --top-qps 5 sync``; ``--help`` shows each flag's environment variable.
"""

from __future__ import annotations

import contextlib
import functools
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import click

from etl import errors, logs
from etl.settings import FIELD_NAMES, SECRET_FIELDS, Settings, env_name, load_settings

F = TypeVar("F", bound=Callable[..., Any])

EXIT_OK = 0
EXIT_FAILED = 1  # the command ran, but something in it failed (ids failed, a check failed)
EXIT_USAGE = 2  # bad input or configuration: nothing was done


class State:
    """Per-invocation state: the CLI-level setting overrides and the settings built from them."""

    def __init__(self, config: Path | None, overrides: dict[str, Any]) -> None:
        self.config = config
        self.overrides = overrides
        self._settings: Settings | None = None

    @property
    def settings(self) -> Settings:
        if self._settings is None:
            self._settings = load_settings(self.overrides, config_path=self.config)
            logs.configure(
                self._settings.log_level, self._settings.log_format, self._settings.secrets()
            )
        return self._settings


def _setting_options(f: F) -> F:
    from etl.settings import Settings as S

    for field in reversed(FIELD_NAMES):
        if field in SECRET_FIELDS:
            continue
        info = S.model_fields[field]
        desc = info.description or field.replace("_", " ")
        f = click.option(
            "--" + field.replace("_", "-"),
            field,
            default=None,
            metavar="VALUE",
            help=f"{desc} [env: {env_name(field)}]",
        )(f)
    return f


def handle_errors(f: F) -> F:
    """Print an EtlError as one clear line and exit non-zero; never a traceback for our errors."""

    @functools.wraps(f)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return f(*args, **kwargs)
        except (errors.ConfigError, errors.InputError) as exc:
            click.echo(f"etl: error: {exc}", err=True)
            sys.exit(EXIT_USAGE)
        except errors.EtlError as exc:
            click.echo(f"etl: error: {exc}", err=True)
            sys.exit(EXIT_FAILED)
        except Exception as exc:
            from etl.db.engine import translate

            translated = translate(exc)
            if translated is None:
                raise
            click.echo(f"etl: error: {translated}", err=True)
            sys.exit(EXIT_FAILED)

    return wrapper  # type: ignore[return-value]


@click.group(context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option(
    "--config",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="TOML config file [env: ETL_CONFIG; default: config/etl.toml if present]",
)
@_setting_options
@click.pass_context
def main(ctx: click.Context, /, config: Path | None, **overrides: Any) -> None:
    """Sync Taobao Open Platform new-retail orders into PostgreSQL."""
    ctx.obj = State(config, {k: v for k, v in overrides.items() if v is not None})


pass_state = click.make_pass_decorator(State)


@main.command()
@click.option("--revision", default="head", show_default=True, help="target revision")
@pass_state
@handle_errors
def migrate(state: State, revision: str) -> None:
    """Create or upgrade the schema (starts the embedded Postgres when no URL is set)."""
    from etl.db import engine
    from etl.db import migrate as db_migrate

    settings = state.settings
    url = engine.database_url(settings)
    before, after = db_migrate.upgrade(url, revision)
    where = settings.database_url_redacted() or f"embedded cluster in {settings.data_dir / 'pg'}"
    if before == after:
        click.echo(f"schema already at {after} ({where})")
    else:
        click.echo(f"schema upgraded {before or 'empty'} -> {after} ({where})")


@main.command("config")
@pass_state
@handle_errors
def show_config(state: State) -> None:
    """Print the effective settings (secrets hidden)."""
    settings = state.settings
    for name in FIELD_NAMES:
        value = getattr(settings, name)
        if name == "database_url":
            value = settings.database_url_redacted() or "(embedded)"
        elif name in SECRET_FIELDS:
            value = "********"
        click.echo(f"{name} = {value}")


def _parse_faults(pairs: tuple[str, ...], spread: float | None) -> dict[str, float]:
    from etl.simulator.server import FAULT_KINDS

    faults: dict[str, float] = {}
    if spread:
        transient = [k for k in FAULT_KINDS if k != "slow"]
        faults = {k: spread / len(transient) for k in transient}
    for pair in pairs:
        kind, sep, rate = pair.partition("=")
        if not sep or kind not in FAULT_KINDS:
            raise errors.InputError(
                f"--fault {pair!r}: expected KIND=RATE with KIND one of {', '.join(FAULT_KINDS)}"
            )
        try:
            faults[kind] = float(rate)
        except ValueError:
            raise errors.InputError(f"--fault {pair!r}: RATE must be a number") from None
    return faults


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True)
@click.option("--port", default=8780, show_default=True, type=int)
@click.option("--seed", default=0, show_default=True, type=int, help="makes orders reproducible")
@click.option(
    "--missing-rate",
    default=0.05,
    show_default=True,
    type=float,
    help="share of ids that do not exist",
)
@click.option("--qps", default=None, type=float, help="QPS cap per app key (default: none)")
@click.option(
    "--ban-seconds", default=2.0, show_default=True, type=float, help="how long a QPS ban lasts"
)
@click.option("--latency-ms", default=0.0, show_default=True, type=float)
@click.option("--jitter-ms", default=0.0, show_default=True, type=float)
@click.option(
    "--fault",
    "faults",
    multiple=True,
    metavar="KIND=RATE",
    help="inject a fault (http_502, remote_timeout, truncated, control_chars, slow)",
)
@click.option(
    "--fault-rate",
    default=None,
    type=float,
    help="total rate of transient faults, spread over the kinds",
)
@click.option("--slow-seconds", default=1.0, show_default=True, type=float)
@click.option("--quota-ban-rate", default=0.0, show_default=True, type=float)
@click.option("--quota-ban-seconds", default=3600.0, show_default=True, type=float)
@click.option("--max-batch", default=100, show_default=True, type=int)
@click.option(
    "--epoch", default=0, show_default=True, type=int, help="bump to make a share of orders change"
)
@pass_state
@handle_errors
def simulate(
    state: State,
    /,
    host: str,
    port: int,
    faults: tuple[str, ...],
    fault_rate: float | None,
    **options: Any,
) -> None:
    """Run the TOP gateway simulator (POST /router/rest) until interrupted.

    It accepts the app key, secret and session of the current settings (ETL_TOP_APP_KEY,
    ETL_TOP_APP_SECRET, ETL_TOP_SESSION), so `etl` pointed at it with the same environment works.
    """
    import asyncio

    from etl.simulator.server import Simulator, SimulatorConfig

    s = state.settings
    config = SimulatorConfig(
        app_key=s.top_app_key,
        app_secret=s.top_app_secret.get_secret_value(),
        session=s.top_session.get_secret_value(),
        faults=_parse_faults(faults, fault_rate),
        **options,
    )

    async def serve() -> None:
        from etl import app

        sim = Simulator(config)
        url = await sim.start(host, port)
        click.echo(f"TOP simulator listening on {url} (app_key {config.app_key}); Ctrl-C stops")
        stop = asyncio.Event()
        app.stop_on_signals(stop)
        try:
            await stop.wait()
        finally:
            await sim.stop()
            click.echo(f"counters: {sim.counters.as_dict()}")

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def _date(value: str | None) -> Any:
    if value is None:
        return None
    from datetime import datetime

    from etl import chinatime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise errors.InputError(f"{value!r} is not a date (YYYY-MM-DD[ HH:MM[:SS]])") from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=chinatime.CHINA)


@main.command()
@click.option(
    "--since",
    default=None,
    metavar="DATE",
    help="only orders synced since DATE (China time unless it has an offset)",
)
@click.option(
    "--api", "api", type=click.Choice(["wdk", "omni", "all"]), default="all", show_default=True
)
@pass_state
@handle_errors
def replay(state: State, /, since: str | None, api: str) -> None:
    """Rebuild the relational rows from the stored raw payloads (no platform calls).

    For after a normalizer fix or a new column: every stored order is normalized again from its
    `raw` column and its rows (children included) rewritten.
    """
    from etl import pipeline
    from etl.db import engine

    engine_ = engine.create_engine(state.settings)
    try:
        apis = ("wdk", "omni") if api == "all" else (api,)
        counters = pipeline.replay(engine_, apis, _date(since))
    finally:
        engine_.dispose()
    click.echo(f"replayed {counters.orders_updated} orders ({counters.orders_stale} skipped)")


# ------------------------------------------------------------------------------------ the queue

EXIT_BANNED = 3  # a long flow-control ban stopped the run; the work stays queued


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
                queue.enqueue(conn, api, kind, keys, refresh=refresh)
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
    from etl.top.client import TopClient

    if metrics_port:
        metrics.serve(metrics_port)

    async def run() -> str | None:
        with app.database(state.settings) as engine:
            async with (
                app.run_record(engine, "worker") as run_id,
                TopClient(state.settings) as client,
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


# ------------------------------------------------------------------------------ status and dlq


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    from etl.reports import as_table

    click.echo(f"\n{title}\n{as_table(headers, [tuple(r) for r in rows])}")


@main.command()
@click.option("--runs", "n_runs", default=5, show_default=True, help="last runs to show")
@pass_state
@handle_errors
def status(state: State, /, n_runs: int) -> None:
    """Queue depth by state and api, active bans, last runs, dead ids."""
    import sqlalchemy as sa

    from etl import app
    from etl.db import bans, queue
    from etl.db.tables import sync_runs

    with app.database(state.settings) as engine, engine.begin() as conn:
        depth = queue.depth(conn)
        active = bans.all_active(conn)
        last = (
            conn.execute(sa.select(sync_runs).order_by(sync_runs.c.id.desc()).limit(n_runs))
            .mappings()
            .all()
        )
        dead = queue.dead(conn, limit=10)
    _table(
        "queue",
        ["api", "state", "ids", "due now", "oldest next attempt"],
        [[r["api"], r["state"], r["n"], r["due"], r["oldest"]] for r in depth],
    )
    if not depth:
        click.echo("queue is empty")
    if active:
        for ban in active:
            click.echo(
                f"BANNED: app key {ban['app_key']} until {ban['until'].isoformat()} "
                f"({ban['sub_code'] or 'flow control'}); work stays queued until then"
            )
    else:
        click.echo("no active ban")
    _table(
        "last runs",
        [
            "id",
            "kind",
            "status",
            "started",
            "ended",
            "claimed",
            "calls",
            "retries",
            "bans",
            "inserted",
            "updated",
            "unchanged",
            "not found",
            "failed",
        ],
        [
            [
                r["id"],
                r["kind"],
                r["status"],
                r["started_at"],
                r["ended_at"],
                r["ids_claimed"],
                r["api_calls"],
                r["retries"],
                r["bans"],
                r["orders_inserted"],
                r["orders_updated"],
                r["orders_unchanged"],
                r["not_found"],
                r["failed"],
            ]
            for r in last
        ],
    )
    if dead:
        _table(
            "dead ids (latest 10; `etl dlq list` for more)",
            ["api", "kind", "key", "attempts", "error class", "error"],
            [
                [
                    d["api"],
                    d["id_kind"],
                    d["key"],
                    d["attempts"],
                    d["last_error_class"],
                    (d["last_error"] or "")[:80],
                ]
                for d in dead
            ],
        )


@main.group()
def dlq() -> None:
    """Ids that failed for good (state dead)."""


@dlq.command("list")
@click.option("--error-class", default=None, help="only this error class (e.g. CallerError)")
@click.option("--limit", default=50, show_default=True)
@pass_state
@handle_errors
def dlq_list(state: State, /, error_class: str | None, limit: int) -> None:
    """List dead ids with their last error."""
    from etl import app
    from etl.db import queue

    with app.database(state.settings) as engine, engine.begin() as conn:
        rows = queue.dead(conn, limit=limit, error_class=error_class)
    if not rows:
        click.echo("no dead ids")
        return
    for d in rows:
        click.echo(
            f"{d['api']}\t{d['id_kind']}\t{d['key']}\t{d['attempts']}\t"
            f"{d['last_error_class']}\t{d['last_error']}"
        )


@dlq.command("requeue")
@click.option("--error-class", default=None, help="only this error class")
@click.option("--api", type=click.Choice(["wdk", "omni"]), default=None)
@pass_state
@handle_errors
def dlq_requeue(state: State, /, error_class: str | None, api: str | None) -> None:
    """Put dead ids back in the queue with fresh attempts."""
    from etl import app
    from etl.db import queue

    with app.database(state.settings) as engine, engine.begin() as conn:
        n = queue.requeue_dead(conn, error_class, api)
    click.echo(f"requeued {n} dead ids")


# ----------------------------------------------------------------------------------------- demo


@main.command()
@click.option("--wdk", "n_wdk", default=1000, show_default=True, help="wdk ids to enqueue")
@click.option("--omni", "n_omni", default=50, show_default=True, help="omni orders to enqueue")
@click.option(
    "--fault-rate",
    default=0.05,
    show_default=True,
    type=float,
    help="transient faults the simulator injects",
)
@pass_state
@handle_errors
def demo(state: State, /, n_wdk: int, n_omni: int, fault_rate: float) -> None:
    """One command on a fresh machine: the embedded Postgres (unless ETL_DATABASE_URL is set), an
    in-process TOP simulator, migrate, enqueue, sync with progress, and a short report."""
    import asyncio

    from etl import demo as demo_mod

    asyncio.run(demo_mod.run(state.settings, n_wdk, n_omni, fault_rate))


# -------------------------------------------------------------------------------------- reports


@main.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="describe each report")
@click.option("--since", default=None, metavar="DATE", help="first China-time day (YYYY-MM-DD)")
@click.option("--until", default=None, metavar="DATE", help="last China-time day, included")
@click.option("--store", default=None, help="one store (store_id / o2o_shop_id)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json"]),
    default="table",
    show_default=True,
)
@click.option("--limit", type=int, default=None, help="at most this many rows")
@pass_state
@handle_errors
def report(
    state: State,
    /,
    name: str | None,
    list_: bool,
    since: str | None,
    until: str | None,
    store: str | None,
    fmt: str,
    limit: int | None,
) -> None:
    """Print a reporting view: daily-sales, pay-channel-mix, item-sales, omni-guides,
    sync-freshness or data-quality (`etl report --list` describes each)."""
    from etl import app, reports

    if list_ or not name:
        for r in reports.REPORTS.values():
            click.echo(f"{r.name:<16} {r.view:<24} {r.description}")
        return
    if name not in reports.REPORTS:
        raise errors.InputError(f"unknown report {name!r}; one of: {', '.join(reports.REPORTS)}")
    day_since = _day(since)
    day_until = _day(until)
    with app.database(state.settings) as engine, engine.begin() as conn:
        try:
            text = reports.render(conn, name, day_since, day_until, store, fmt, limit)
        except ValueError as exc:
            raise errors.InputError(str(exc)) from None
    click.echo(text, nl=not text.endswith("\n"))


def _day(value: str | None) -> Any:
    if value is None:
        return None
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise errors.InputError(f"{value!r} is not a date (YYYY-MM-DD)") from None
