"""``etl prune``: retention once (finished queue rows, superseded order versions, ended runs)."""

from __future__ import annotations

import click

from etl.cli.base import State, handle_errors, main, pass_state


def _days(days: float) -> str:
    return "kept forever" if days <= 0 else f"older than {days:g} days"


@main.command()
@click.option("--dry-run", is_flag=True, help="count what would go; change nothing")
@pass_state
@handle_errors
def prune(state: State, /, dry_run: bool) -> None:
    """Remove what the keep_* settings no longer keep, in batches of 5,000 rows, under an
    advisory lock (a second prune at the same time skips); create order_archive's monthly
    partitions ahead. Prints per table what went (with --dry-run: what would go)."""
    from etl import app
    from etl.db import retention

    settings = state.settings
    keep = app.keep_periods(settings)
    with app.database(settings) as engine:
        report = retention.prune(engine, keep, dry_run=dry_run)
    if report.skipped:
        click.echo("another process is pruning this database; nothing done")
        return
    verb = "would remove" if dry_run else "removed"
    dropped = report.partitions_dropped
    whole = f" ({len(dropped)} partitions dropped whole: {', '.join(dropped)})" if dropped else ""
    if dry_run and dropped:
        whole = f" ({len(dropped)} partitions would be dropped whole: {', '.join(dropped)})"
    click.echo(
        f"sync_queue     {verb} {report.queue} finished rows ({_days(keep.queue_days)})\n"
        f"order_archive  {verb} {report.archive} superseded versions "
        f"({_days(keep.archive_days)}){whole}\n"
        f"sync_runs      {verb} {report.runs} ended runs ({_days(keep.runs_days)})"
    )
    if report.partitions_created:
        made = "would create" if dry_run else "created"
        click.echo(f"order_archive  {made} partitions {', '.join(report.partitions_created)}")
    click.echo(f"({report.seconds:.1f}s)")
