"""Commands on payloads themselves: load captured responses (``etl load``), print raw JSON
(``etl raw``)."""

from __future__ import annotations

import contextlib
import signal
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import click

from etl import errors
from etl.cli.base import EXIT_FAILED, EXIT_OK, State, handle_errors, main, pass_state


def _when(value: str | None) -> datetime:
    if not value:
        return datetime.now(UTC)
    from etl import chinatime

    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise errors.InputError(
            f"--fetched-at {value!r} is not a date-time (e.g. 2026-03-01T12:00+08:00)"
        ) from None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=chinatime.CHINA)


@main.command("load")
@click.option("--api", "api", type=click.Choice(["wdk", "omni"]), required=True)
@click.option(
    "--fetched-at",
    "fetched_at",
    default=None,
    metavar="TIME",
    help="when the payloads were captured (default: now; China time unless it has an offset); "
    "an older capture never overwrites a newer stored payload",
)
@click.option(
    "--user-id", "user_id", default=None, help="omni: the user_id the orders were queried with"
)
@click.argument("files", nargs=-1, required=True, metavar="FILE...")
@pass_state
@handle_errors
def load_command(
    state: State,
    /,
    api: str,
    fetched_at: str | None,
    user_id: str | None,
    files: tuple[str, ...],
) -> None:
    """Load payloads captured elsewhere: JSON lines, each a whole response body (either shape)
    or a single order object; `-` reads standard input. No platform call is made.

    Unchanged orders (same content hash) are skipped before normalizing, older captures never
    overwrite newer payloads, every new version is archived. A line that cannot be read (not
    JSON, an error_response, an order without its id) is reported with FILE:LINE and skipped;
    the rest still loads. Exit 1 if any line was skipped.
    """
    from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

    from etl import app, loading
    from etl.db import engine as db_engine
    from etl.db import runs
    from etl.normalize.pool import Digested, Normalizer

    for name in files:
        if name != "-" and not Path(name).is_file():
            raise errors.InputError(f"{name}: no such file")
    at = _when(fetched_at)
    settings = state.settings
    total = sum(Path(n).stat().st_size for n in files if n != "-") if "-" not in files else None
    stopping: list[str] = []

    def on_signal(signum: int, _frame: Any) -> None:
        if not stopping:
            click.echo("stopping after the batches in flight", err=True)
        stopping.append(signal.Signals(signum).name)

    counters = runs.RunCounters()
    bad: list[tuple[str, str]] = []
    normalizer = Normalizer(settings.normalize_processes)
    normalizer.warm()  # its processes start while the database is reached
    with normalizer, app.database(settings) as engine:
        with engine.begin() as c:
            run_id = runs.start(c, "load")
        status, error = "ok", None
        sizes = [0]
        started = time.monotonic()
        columns = (
            TextColumn("load"),
            BarColumn(),
            TextColumn("{task.fields[orders]:>9,} orders {task.fields[rate]:>7,.0f}/s"),
            TimeElapsedColumn(),
            TextColumn("bad lines {task.fields[bad]}"),
        )
        old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            with (
                Progress(*columns, disable=not sys.stderr.isatty()) as bar,
                db_engine.psycopg_connection(engine) as conn,
                db_engine.psycopg_connection(engine) as lookup_conn,
            ):
                task = bar.add_task("load", total=total, orders=0, rate=0.0, bad=0)

                seen = [0]

                def on_batch(digested: Digested, _result: Any) -> None:
                    for where, why in digested.errors:
                        click.echo(f"etl: {where}: {why}", err=True)
                    bad.extend(digested.errors)
                    seen[0] += len(digested.orders)
                    done = seen[0]
                    rate = done / max(0.001, time.monotonic() - started)
                    bar.update(task, completed=sizes[0], orders=done, rate=rate, bad=len(bad))

                totals = loading.load_files(
                    conn,
                    api,
                    files,
                    normalizer,
                    at,
                    user_id=user_id,
                    sizes=sizes,
                    lookup_conn=lookup_conn,
                    on_batch=on_batch,
                    stop=lambda: bool(stopping),
                )
                counters.orders_inserted = totals.inserted
                counters.orders_updated = totals.updated
                counters.orders_unchanged = totals.unchanged
                counters.orders_stale = totals.stale
                counters.failed = totals.bad_lines
                counters.details["orders_normalized"] = totals.normalized
                if totals.bad_fields:
                    counters.details["bad_fields"] = totals.bad_fields
                if totals.unknown_fields:
                    counters.details["unknown_fields"] = sorted(totals.unknown_fields)
            status = "interrupted" if stopping else "failed" if bad else "ok"
        except BaseException as exc:
            status, error = "failed", str(exc)
            raise
        finally:
            for sig, handler in old.items():
                with contextlib.suppress(ValueError, TypeError):
                    signal.signal(sig, handler)
            with engine.begin() as c:
                runs.finish(c, run_id, counters, status, error)
    elapsed = max(0.001, time.monotonic() - started)
    n = counters.orders_inserted + counters.orders_updated
    n += counters.orders_unchanged + counters.orders_stale
    click.echo(
        f"run {run_id} {status}: {n} orders in {elapsed:.1f} s ({n / elapsed:,.0f}/s): "
        f"inserted {counters.orders_inserted}, updated {counters.orders_updated}, "
        f"unchanged {counters.orders_unchanged}, stale {counters.orders_stale}; "
        f"normalized {counters.details.get('orders_normalized', 0)}; bad lines {len(bad)}"
    )
    if stopping:
        click.echo("interrupted: run the same command again (loaded orders are skipped)")
    sys.exit(EXIT_FAILED if bad else EXIT_OK)


@main.command("raw")
@click.argument("api", type=click.Choice(["wdk", "omni"]))
@click.argument("key")
@click.option("--all", "all_versions", is_flag=True, help="every stored version, oldest first")
@pass_state
@handle_errors
def raw_command(state: State, /, api: str, key: str, all_versions: bool) -> None:
    """Print an order's raw JSON as received (the stored version; --all: every version, one
    JSON line each with its fetched_at and hash). SQL: SELECT etl_raw('wdk', '500031414182214').
    """
    import orjson
    import sqlalchemy as sa

    from etl import app

    if api == "wdk" and not key.strip().isdigit():
        raise errors.InputError(f"wdk key {key!r} is not a biz_order_id (digits)")
    with app.database(state.settings) as engine, engine.connect() as conn:
        if all_versions:
            rows = conn.execute(
                sa.text(
                    "SELECT fetched_at, payload_hash, raw FROM order_archive "
                    "WHERE api = :api AND order_key = :key ORDER BY fetched_at, id"
                ),
                {"api": api, "key": key.strip()},
            ).all()
            for at, digest, raw in rows:
                head = orjson.dumps({"fetched_at": at.isoformat(), "payload_hash": digest})
                click.echo(head[:-1].decode() + ',"raw":' + raw + "}")
            found = bool(rows)
        else:
            raw = conn.execute(
                sa.text("SELECT etl_raw(:api, :key)::text"), {"api": api, "key": key.strip()}
            ).scalar_one()
            found = raw is not None
            if found:
                # an integer beyond 64 bits cannot be re-indented: printed as stored then
                with contextlib.suppress(orjson.JSONDecodeError):
                    raw = orjson.dumps(orjson.loads(raw), option=orjson.OPT_INDENT_2).decode()
                click.echo(raw)
    if not found:
        click.echo(f"etl: error: no {api} order {key} is stored", err=True)
        sys.exit(EXIT_FAILED)
