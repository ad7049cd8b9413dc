"""Reporting views on the terminal."""

from __future__ import annotations

from typing import Any

import click

from etl import errors
from etl.cli.base import (
    State,
    handle_errors,
    main,
    pass_state,
)


@main.command()
@click.argument("name", required=False)
@click.option("--list", "list_", is_flag=True, help="describe each report")
@click.option("--since", default=None, metavar="DATE", help="first China-time day (YYYY-MM-DD)")
@click.option("--until", default=None, metavar="DATE", help="last China-time day, included")
@click.option("--store", default=None, help="one store (store_id / o2o_shop_id)")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["table", "csv", "json", "html"]),
    default="table",
    show_default=True,
    help="html: a self-contained page with a chart and the table (see -o)",
)
@click.option("--limit", type=int, default=None, help="at most this many rows (at least 1)")
@click.option("--all", "all_", is_flag=True, help="every report on one page (--format html)")
@click.option(
    "--output",
    "-o",
    type=click.Path(dir_okay=False, writable=True),
    default=None,
    help="write to FILE instead of standard output",
)
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
    all_: bool,
    output: str | None,
) -> None:
    """Print a reporting view: daily-sales, pay-channel-mix, item-sales, omni-guides,
    sync-freshness, tmc-freshness or data-quality (`etl report --list` describes each).
    `--format html -o F` writes a self-contained page with a chart; `--all --format html -o F`
    puts every report on one page.

    An option that does not apply to the report (--since / --until on a report without days,
    --store on one without stores), --since after --until, or --limit below 1 is an error (exit
    2). In JSON, decimals are strings and counts are numbers."""
    from etl import app, reports

    if all_ or fmt == "html":
        _html(state, name, all_, _day(since), _day(until), store, output)
        return
    if list_ or not name:
        for r in reports.REPORTS.values():
            click.echo(f"{r.name:<16} {r.view:<24} {r.description}")
        return
    if name not in reports.REPORTS:
        raise errors.InputError(f"unknown report {name!r}; one of: {', '.join(reports.REPORTS)}")
    day_since, day_until = _day(since), _day(until)
    try:  # before touching the database: a filter that does not apply is a usage error
        reports.check_options(reports.REPORTS[name], day_since, day_until, store, limit)
    except ValueError as exc:
        raise errors.InputError(str(exc)) from None
    with app.database(state.settings) as engine, engine.begin() as conn:
        try:
            text = reports.render(conn, name, day_since, day_until, store, fmt, limit)
        except ValueError as exc:
            raise errors.InputError(str(exc)) from None
    _write(text, output)


def _write(text: str, output: str | None) -> None:
    if output is None:
        click.echo(text, nl=not text.endswith("\n"))
        return
    try:
        with open(output, "w", encoding="utf-8") as fh:
            fh.write(text if text.endswith("\n") else text + "\n")
    except OSError as exc:
        raise errors.InputError(f"cannot write {output}: {exc}") from exc
    click.echo(f"wrote {output} ({len(text.encode()) // 1024 + 1} KB)", err=True)


def _html(
    state: State,
    name: str | None,
    all_: bool,
    since: Any,
    until: Any,
    store: str | None,
    output: str | None,
) -> None:
    from etl import app, report_html, reports

    if all_ and name:
        raise errors.InputError("give a report NAME or --all, not both")
    if not all_ and not name:
        raise errors.InputError("give a report NAME, or --all for every report")
    if name and name not in reports.REPORTS:
        raise errors.InputError(f"unknown report {name!r}; one of: {', '.join(reports.REPORTS)}")
    if since and until and since > until:
        raise errors.InputError(f"--since {since} is after --until {until}")
    names = list(reports.REPORTS) if all_ else [str(name)]
    with app.database(state.settings) as engine, engine.begin() as conn:
        text = report_html.render(conn, names, since, until, store)
    _write(text, output)


def _day(value: str | None) -> Any:
    if value is None:
        return None
    from datetime import date

    try:
        return date.fromisoformat(value)
    except ValueError:
        raise errors.InputError(f"{value!r} is not a date (YYYY-MM-DD)") from None
