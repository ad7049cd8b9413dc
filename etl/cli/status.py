"""What the operator looks at: status and the dead-letter ids."""

from __future__ import annotations

from typing import Any

import click

from etl.cli.base import (
    State,
    handle_errors,
    main,
    pass_state,
)


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

    # ---- shared quota (issue 12): per app key, the quota, the rate in use now, the processes
    # holding shares, and the calls today against the daily budget. Kept apart on purpose.
    from etl.db import quota as db_quota

    with app.database(state.settings) as engine, engine.begin() as conn:
        shares = db_quota.status(
            conn, {state.settings.top_app_key: state.settings.top_daily_budget}
        )
    for key in shares:
        in_use = (
            f"{key['quota']:g} calls/s; in use {key['rate']:.1f} calls/s "
            f"({key['units']} granted to {len(key['holders'])} process(es))"
            if key["holders"]
            else "no process holds a share now"
        )
        budget = f" of a budget of {key['daily_budget']}" if key["daily_budget"] else ""
        click.echo(
            f"\nquota of app key {key['app_key']}: {in_use}; calls today "
            f"{key['calls_today']}{budget} (China-time day {key['day']})"
        )
        if key["holders"]:
            _table(
                "processes holding shares",
                ["holder", "role", "granted calls/s", "rate", "since", "renewed"],
                [
                    [
                        h["holder"],
                        h["role"],
                        h["units"],
                        round(h["rate"], 1),
                        h["since"],
                        h["renewed_at"],
                    ]
                    for h in key["holders"]
                ],
            )
    if not shares:
        click.echo("\nno process holds a share of a quota and no calls today")


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
