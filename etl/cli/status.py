"""What the operator looks at: status, ids by state, and the dead-letter ids."""

from __future__ import annotations

import sys
from collections import defaultdict
from typing import Any

import click

from etl import errors
from etl.chinatime import display
from etl.cli.base import (
    State,
    handle_errors,
    main,
    pass_state,
)

BACKLOG = ("pending", "failed", "leased")  # ids still to fetch
RUN_COLUMNS = [
    ("id", "id"),
    ("kind", "kind"),
    ("status", "status"),
    ("started", "started_at"),
    ("ended / last seen", "ended_at"),
    ("claimed", "ids_claimed"),
    ("calls", "api_calls"),
    ("retries", "retries"),
    ("bans", "bans"),
    ("inserted", "orders_inserted"),
    ("updated", "orders_updated"),
    ("unchanged", "orders_unchanged"),
    ("not found", "not_found"),
    ("failed", "failed"),
]


def _table(title: str, headers: list[str], rows: list[list[Any]]) -> None:
    from etl.reports import as_table

    click.echo(f"\n{title}\n{as_table(headers, [tuple(r) for r in rows])}")


def backlog_rows(depth: list[dict[str, Any]]) -> list[list[Any]]:
    """Ids still to fetch, per api and state: "due now" and times only where they mean
    something (a leased id is due when its lease expires; none is ever due in the future)."""
    rows = []
    for r in depth:
        if r["state"] not in BACKLOG:
            continue
        if r["state"] == "leased":
            rows.append([r["api"], r["state"], r["n"], r["due"], "", display(r["lease_until"])])
        else:
            rows.append(
                [
                    r["api"],
                    r["state"],
                    r["n"],
                    r["due"],
                    display(r["oldest_due"]),
                    display(r["next_at"]),
                ]
            )
    return rows


def finished_line(depth: list[dict[str, Any]]) -> str:
    per_api: dict[str, list[str]] = defaultdict(list)
    for r in depth:
        if r["state"] in ("done", "dead"):
            per_api[r["api"]].append(f"{r['state']} {r['n']}")
    return "; ".join(f"{api} {', '.join(parts)}" for api, parts in per_api.items())


@main.command()
@click.option("--runs", "n_runs", default=5, show_default=True, help="last runs to show")
@pass_state
@handle_errors
def status(state: State, /, n_runs: int) -> None:
    """The queue (backlog, not-found ids, finished), bans and rejected credentials, the last runs
    (a killed one shows as such), dead ids. Times are China time."""
    import sqlalchemy as sa

    from etl import app
    from etl.cli.tmc import status_lines as tmc_status_lines
    from etl.db import bans, holds, queue, runs
    from etl.db.tables import sync_runs

    with app.database(state.settings) as engine, engine.begin() as conn:
        depth = queue.depth(conn)
        rechecks = queue.rechecks_pending(conn)
        active = bans.all_active(conn)
        rejected = holds.all_holds(conn)
        last = (
            conn.execute(sa.select(sync_runs).order_by(sync_runs.c.id.desc()).limit(n_runs))
            .mappings()
            .all()
        )
        dead = queue.dead(conn, limit=10)
        tmc_lines = tmc_status_lines(conn)  # --- TMC (issue 11)
        now = conn.execute(sa.select(sa.func.now())).scalar_one()
    for r in depth:
        r["rechecks"] = rechecks.get(r["api"], 0)
    backlog = backlog_rows(depth)
    if backlog:
        _table(
            "backlog (ids still to fetch)",
            ["api", "state", "ids", "due now", "oldest due since", "next attempt / lease until"],
            backlog,
        )
    else:
        click.echo("\nbacklog: nothing to fetch")
    missing = [r for r in depth if r["state"] == "not_found"]
    if missing:
        _table(
            "not found (the platform did not return them; `etl ids list --state not_found`)",
            ["api", "ids", "awaiting a re-check", "next re-check"],
            [[r["api"], r["n"], r["rechecks"], display(r["next_at"])] for r in missing],
        )
    finished = finished_line(depth)
    click.echo(f"\nfinished: {finished}" if finished else "\nfinished: none yet")
    if not depth:
        click.echo("queue is empty")
    click.echo("")
    for ban in active:
        click.echo(
            f"BANNED: app key {ban['app_key']} until {display(ban['until'])} "
            f"({ban['sub_code'] or 'flow control'}); work stays queued until then"
        )
    if not active:
        click.echo("no active ban")
    for hold in rejected:
        click.echo(
            f"CREDENTIALS REJECTED: app key {hold.app_key} since {display(hold.since)} "
            f"({hold.error_class}, {hold.tries} tries): check {hold.setting}; "
            f"next try {display(hold.next_try_at)}"
        )
    if not rejected:
        click.echo("credentials: no rejection recorded")
    rows = []
    for run_row in last:
        row = dict(run_row)
        row["status"] = runs.liveness(row, now)
        row["started_at"] = display(row["started_at"])
        row["ended_at"] = display(row["ended_at"] or row.get("heartbeat_at"))
        rows.append([row[key] for _, key in RUN_COLUMNS])
    _table("last runs", [title for title, _ in RUN_COLUMNS], rows)
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

    # --- TMC (issue 11): the message service's freshness, topics and unreadable messages
    click.echo("")
    for line in tmc_lines:
        click.echo(line)

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
                        display(h["since"]),
                        display(h["renewed_at"]),
                    ]
                    for h in key["holders"]
                ],
            )
    if not shares:
        click.echo("\nno process holds a share of a quota and no calls today")


ID_COLUMNS = [
    "api",
    "id_kind",
    "key",
    "state",
    "attempts",
    "not_found_checks",
    "next_attempt_at",
    "last_error_class",
    "last_error",
    "updated_at",
]


@main.group()
def ids() -> None:
    """Ids by state, for a person to act on (not found, dead, failed, ...)."""


@ids.command("list")
@click.option(
    "--state",
    "states",
    multiple=True,
    type=click.Choice(["pending", "leased", "failed", "not_found", "done", "dead"]),
    default=("not_found", "dead", "failed"),
    show_default=True,
    help="states to list (repeat the option for several)",
)
@click.option("--api", type=click.Choice(["wdk", "omni"]), default=None)
@click.option(
    "--format", "fmt", type=click.Choice(["table", "csv"]), default="table", show_default=True
)
@click.option("--limit", type=int, default=1000, show_default=True, help="at most this many ids")
@pass_state
@handle_errors
def ids_list(
    state: State, /, states: tuple[str, ...], api: str | None, fmt: str, limit: int
) -> None:
    """List ids in the given states with their last error and next attempt (China time)."""
    from etl import app
    from etl.db import queue
    from etl.reports import as_csv, as_table

    if limit < 1:
        raise errors.InputError("--limit must be at least 1")
    with app.database(state.settings) as engine, engine.begin() as conn:
        rows = queue.by_state(conn, states, api, limit)
    table = [
        tuple(display(r[c]) if c in ("next_attempt_at", "updated_at") else r[c] for c in ID_COLUMNS)
        for r in rows
    ]
    if fmt == "csv":
        sys.stdout.write(as_csv(ID_COLUMNS, table))
    elif not rows:
        click.echo(f"no ids in state {', '.join(states)}")
    else:
        click.echo(as_table(ID_COLUMNS, table))


@main.group()
def dlq() -> None:
    """Ids that failed for good (state dead)."""


@dlq.command("list")
@click.option("--error-class", default=None, help="only this error class (e.g. CallerError)")
@click.option("--limit", default=50, show_default=True)
@pass_state
@handle_errors
def dlq_list(state: State, /, error_class: str | None, limit: int) -> None:
    """List dead ids with their last error (a table, like `etl status`)."""
    from etl import app
    from etl.db import queue
    from etl.reports import as_table

    with app.database(state.settings) as engine, engine.begin() as conn:
        rows = queue.dead(conn, limit=limit, error_class=error_class)
    if not rows:
        click.echo("no dead ids")
        return
    headers = ["api", "kind", "key", "attempts", "error class", "error", "since"]
    click.echo(
        as_table(
            headers,
            [
                (
                    d["api"],
                    d["id_kind"],
                    d["key"],
                    d["attempts"],
                    d["last_error_class"],
                    d["last_error"],
                    display(d["updated_at"]),
                )
                for d in rows
            ],
        )
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
