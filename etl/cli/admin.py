"""Commands that set up and inspect: migrate, config, simulate, demo, replay."""

from __future__ import annotations

import contextlib
from typing import Any

import click

from etl import errors
from etl.cli.base import (
    State,
    handle_errors,
    main,
    pass_state,
)
from etl.settings import FIELD_NAMES, SECRET_FIELDS


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
    role = settings.reader_role
    if role:  # a missing role stops it before anything is migrated
        _check_reader_role(settings, role)
    before, after = db_migrate.upgrade(url, revision, reader_role=role)
    where = settings.database_url_redacted() or f"embedded cluster in {settings.data_dir / 'pg'}"
    if before == after:
        click.echo(f"schema already at {after} ({where})")
    else:
        click.echo(f"schema upgraded {before or 'empty'} -> {after} ({where})")
    if role:
        click.echo(f"read-only access (order tables and views) granted to role {role}")
    if after == db_migrate.head_revision(url):
        created = _partitions_ahead(settings)
        if created:
            click.echo(f"order_archive partitions created ahead: {', '.join(created)}")


def _partitions_ahead(settings: Any) -> list[str]:
    from etl.db import engine, partitions

    engine_ = engine.create_engine(settings)
    try:
        with engine_.begin() as conn:
            return partitions.ensure_ahead(conn)
    finally:
        engine_.dispose()


def _check_reader_role(settings: Any, role: str) -> None:
    from etl.db import engine, grants

    engine_ = engine.create_engine(settings)
    try:
        with engine_.connect() as conn:
            grants.check_role(conn, role)
    finally:
        engine_.dispose()


@main.command("grant-reader")
@click.argument("role")
@pass_state
@handle_errors
def grant_reader(state: State, /, role: str) -> None:
    """Give an existing ROLE read-only access for reporting tools: SELECT on the order tables and
    the report views; no writes, no queue or run tables. Create the role first (CREATE ROLE ...
    LOGIN PASSWORD ...). Set reader_role to have `etl migrate` re-apply it after every upgrade."""
    from etl import app
    from etl.db import grants

    with app.database(state.settings) as engine, engine.begin() as conn:
        granted = grants.grant_reader(conn, role)
    click.echo(
        f"role {granted.role} may read {len(granted.tables)} tables "
        f"({', '.join(granted.tables)}) and {len(granted.views)} views "
        f"({', '.join(granted.views)}); no access to {', '.join(granted.refused) or 'nothing else'}"
    )


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
@click.option(
    "--tmc-rate",
    default=0.0,
    show_default=True,
    type=float,
    help="message service: order changes published per second (0 = none)",
)
@click.option(
    "--tmc-orders",
    default=1000,
    show_default=True,
    type=int,
    help="message service: the stream moves orders FIRST_ID .. FIRST_ID+N-1",
)
@click.option(
    "--tmc-first-id",
    default=500_031_414_182_214,
    show_default=True,
    type=int,
    help="message service: first biz_order_id the stream moves (the demo's first id)",
)
@click.option(
    "--tmc-redelivery-seconds",
    default=30.0,
    show_default=True,
    type=float,
    help="message service: an unconfirmed message is delivered again after this",
)
@click.option(
    "--tmc-noise",
    default=0.05,
    show_default=True,
    type=float,
    help="message service: share of duplicates, out-of-order and other-topic messages "
    "(each; unreadable ones at a fifth of it)",
)
@click.option(
    "--prerender",
    default=0,
    show_default=True,
    type=click.IntRange(min=0),
    help="serialize the first N demo wdk orders at start, so serving them costs little CPU "
    "(for benchmarks sharing the machine)",
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
    prerender: int,
    **options: Any,
) -> None:
    """Run the TOP gateway simulator (POST /router/rest) until interrupted.

    It accepts the app key, secret and session of the current settings (ETL_TOP_APP_KEY,
    ETL_TOP_APP_SECRET, ETL_TOP_SESSION), so `etl` pointed at it with the same environment works.
    """
    import asyncio

    from etl.simulator.server import Simulator, SimulatorConfig

    s = state.settings
    tmc = _tmc_config(options)
    config = SimulatorConfig(
        app_key=s.top_app_key,
        app_secret=s.top_app_secret.get_secret_value(),
        session=s.top_session.get_secret_value(),
        faults=_parse_faults(faults, fault_rate),
        tmc=tmc,
        **options,
    )

    async def serve() -> None:
        from etl import app

        sim = Simulator(config)
        if prerender:
            from etl.simulator.data import FIRST_DEMO_BIZ_ID

            sim.prerender(FIRST_DEMO_BIZ_ID, prerender)
        url = await sim.start(host, port)
        click.echo(f"TOP simulator listening on {url} (app_key {config.app_key}); Ctrl-C stops")
        if config.tmc.rate > 0:
            click.echo(f"message service: {config.tmc.rate:g} order changes/s")
        stop = asyncio.Event()
        app.stop_on_signals(stop)
        try:
            await stop.wait()
        finally:
            await sim.stop()
            click.echo(f"counters: {sim.counters.as_dict()}")
            if config.tmc.rate > 0:
                click.echo(f"message service: {sim.tmc.counters.as_dict()}")

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


def _tmc_config(options: dict[str, Any]) -> Any:
    """The simulator's message service from the ``--tmc-*`` options (removed from ``options``)."""
    from etl.simulator.tmc import TmcConfig

    noise = options.pop("tmc_noise")
    if not 0 <= noise <= 1:
        raise errors.InputError(f"--tmc-noise {noise}: expected a share between 0 and 1")
    return TmcConfig(
        rate=options.pop("tmc_rate"),
        orders=options.pop("tmc_orders"),
        first_id=options.pop("tmc_first_id"),
        redelivery_seconds=options.pop("tmc_redelivery_seconds"),
        duplicate_rate=noise,
        reorder_rate=noise,
        other_topic_rate=noise,
        unreadable_rate=noise / 5,
    )


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
    raw JSON (its version in order_archive) and its rows (children included) rewritten.
    """
    from etl import pipeline
    from etl.db import engine

    engine_ = engine.create_engine(state.settings)
    try:
        apis = ("wdk", "omni") if api == "all" else (api,)
        counters = pipeline.replay(
            engine_, apis, _date(since), processes=state.settings.normalize_processes
        )
    finally:
        engine_.dispose()
    click.echo(f"replayed {counters.orders_updated} orders ({counters.orders_stale} skipped)")


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
@click.option(
    "--live-seconds",
    default=15.0,
    show_default=True,
    type=float,
    help="after the load, orders arrive and change through the message service (0 = skip)",
)
@pass_state
@handle_errors
def demo(state: State, /, n_wdk: int, n_omni: int, fault_rate: float, live_seconds: float) -> None:
    """One command on a fresh machine: the embedded Postgres (unless ETL_DATABASE_URL is set), an
    in-process TOP simulator, migrate, enqueue, sync with progress, a short report, then orders
    arriving and updating live through the message service (TMC)."""
    import asyncio

    from etl import demo as demo_mod

    asyncio.run(demo_mod.run(state.settings, n_wdk, n_omni, fault_rate, live_seconds))
