"""The one orchestrator: a batch end to end (claim → fetch → normalize → load + ack), and replay.

Every entry point (worker, sync, backfill, demo) drives :class:`Syncer`; only how ids get into
the queue differs. A batch's load and its queue ack commit in one transaction.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import psycopg
import sqlalchemy as sa
from psycopg import sql
from sqlalchemy.engine import Engine

from etl import errors, loading, logs, metrics
from etl.db import bans, holds, load, queue, runs
from etl.db import engine as db_engine
from etl.db import tmc as tmc_db
from etl.handoff import Hand
from etl.ids import omni_parts
from etl.normalize.orders import InvalidOrder, NormalizedOrder, normalize_omni, normalize_wdk
from etl.normalize.pool import (
    Digested,
    Fetched,
    Normalizer,
    read_wdk_body,
    shared_normalizer,
)
from etl.settings import Settings
from etl.top import apis
from etl.top.client import TopClient

log = logging.getLogger(__name__)

REPLAY_BATCH = 1000
EXPIRED_CLAIM_SECONDS = 5.0  # how often a claim also looks for expired leases
CREW_POLL_SECONDS = 0.5  # how soon a lane waiting for the others sees a stop or a halt
FEEDING_POLL_SECONDS = 0.1  # a drain fed meanwhile (etl backfill) looks for new ids this often
DEFAULT_PROCESSES = 2  # normalizer processes when the caller has no settings at hand


@dataclass
class Quality:
    """What normalization found odd in a run: bad fields by name, unknown fields (reported once)."""

    bad_fields: Counter[str] = field(default_factory=Counter)
    unknown_fields: set[str] = field(default_factory=set)
    invalid_orders: int = 0

    def merge(self, other: Quality) -> None:
        self.bad_fields.update(other.bad_fields)
        self.unknown_fields |= other.unknown_fields
        self.invalid_orders += other.invalid_orders

    def note(self, order: NormalizedOrder | load.Encoded) -> None:
        for name in order.bad_fields:
            self.bad_fields[_generic(name)] += 1
        self.unknown_fields.update(order.unknown_fields)

    def details(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        if self.bad_fields:
            out["bad_fields"] = dict(self.bad_fields)
        if self.unknown_fields:
            out["unknown_fields"] = sorted(self.unknown_fields)
        if self.invalid_orders:
            out["invalid_orders"] = self.invalid_orders
        return out

    def report(self) -> None:
        if self.unknown_fields:
            log.warning(
                "the platform sent fields the schema does not know (kept in raw): %s",
                ", ".join(sorted(self.unknown_fields)),
            )
        if self.bad_fields:
            log.warning("unreadable field values stored as NULL: %s", dict(self.bad_fields))


def _generic(name: str) -> str:
    """``sub_orders[3].ns_quantity`` → ``sub_orders[].ns_quantity``."""
    out, depth = [], 0
    for ch in name:
        if ch == "[":
            depth += 1
            out.append("[]")
        elif ch == "]":
            depth -= 1
        elif depth == 0:
            out.append(ch)
    return "".join(out)


def normalize(
    api: str,
    raw: dict[str, Any],
    fetched_at: datetime,
    quality: Quality,
    user_id: str | None = None,
) -> tuple[NormalizedOrder | None, str | None]:
    """Normalize one raw order, noting what was odd in ``quality``; ``(None, why)`` for an order
    that cannot be stored."""
    try:
        order = (
            normalize_wdk(raw, fetched_at)
            if api == "wdk"
            else normalize_omni(raw, fetched_at, user_id)
        )
    except InvalidOrder as exc:
        quality.invalid_orders += 1
        log.error("order cannot be stored: %s", exc)
        return None, str(exc)
    quality.note(order)
    return order, None


def _stored(
    conn: psycopg.Connection[Any], api: str, since: datetime | None
) -> Iterator[list[load.Encoded]]:
    """The stored orders of ``api`` as raw JSON (their version in order_archive), by batch."""
    spec = load.SPECS[api]
    user = sql.SQL("o.user_id") if api == "omni" else sql.SQL("NULL::text")
    where = sql.SQL("WHERE o.synced_at >= %(since)s") if since else sql.SQL("")
    stmt = sql.SQL(
        "SELECT o.{key}, o.payload_hash, o.fetched_at, {user}, a.raw FROM {table} o "
        # the version archived with the row's fetched_at: one partition of order_archive read,
        # not every month's; else (archived with another time) the latest with its hash
        "LEFT JOIN LATERAL (SELECT coalesce("
        "(SELECT raw FROM order_archive a WHERE a.api = %(api)s "
        "AND a.order_key = o.{key}::text AND a.payload_hash = o.payload_hash "
        "AND a.fetched_at = o.fetched_at ORDER BY a.id DESC LIMIT 1), "
        "(SELECT raw FROM order_archive a WHERE a.api = %(api)s "
        "AND a.order_key = o.{key}::text AND a.payload_hash = o.payload_hash "
        "ORDER BY a.fetched_at DESC, a.id DESC LIMIT 1)) AS raw) a ON true {where} "
        "ORDER BY o.{key}"
    ).format(
        user=user, table=sql.Identifier(spec.table.name), where=where, key=sql.Identifier(spec.key)
    )
    with conn.cursor(name=f"replay_{api}") as cur:
        cur.itersize = REPLAY_BATCH
        cur.execute(stmt, {"api": api, "since": since})
        while rows := cur.fetchmany(REPLAY_BATCH):
            batch = []
            for key, digest, at, user_id, raw in rows:
                if raw is None:
                    log.error("%s order %s has no stored raw JSON: not replayed", api, key)
                    continue
                batch.append(load.Encoded(api, key, digest, at, raw.encode(), user_id))
            yield batch


def replay(
    engine: Engine,
    apis: tuple[str, ...] = ("wdk", "omni"),
    since: datetime | None = None,
    *,
    processes: int | None = None,
) -> runs.RunCounters:
    """Rebuild the relational rows of stored orders from their raw payloads (no platform calls).

    Every order is rewritten from its raw JSON in order_archive (children replaced), in batches
    of REPLAY_BATCH, each its own transaction, normalized off this process while the previous
    batch loads; ``changed_at`` does not move and nothing is archived.
    """
    counters = runs.RunCounters()
    quality = Quality()
    with engine.begin() as c:
        run_id = runs.start(c, "replay")
    status, error = "ok", None
    try:
        with (
            db_engine.psycopg_connection(engine) as reader,
            db_engine.psycopg_connection(engine) as writer,
            Normalizer(DEFAULT_PROCESSES if processes is None else processes) as normalizer,
        ):
            for api in apis:
                digests = (
                    loading.completed(Digested(orders=batch, lines=len(batch)))
                    for batch in _stored(reader, api, since)
                )
                totals = loading.run(writer, api, digests, normalizer, rebuild=True)
                counters.orders_updated += totals.inserted + totals.updated
                counters.orders_stale += totals.stale
                for name, n in totals.bad_fields.items():
                    quality.bad_fields[_generic(name)] += n
                quality.unknown_fields |= totals.unknown_fields
            reader.rollback()
    except BaseException as exc:
        status, error = (
            ("interrupted" if isinstance(exc, KeyboardInterrupt) else "failed"),
            str(exc),
        )
        raise
    finally:
        counters.details.update(quality.details())
        quality.report()
        with engine.begin() as c:
            runs.finish(c, run_id, counters, status, error)
    return counters


# ------------------------------------------------------------------------------------ syncing

DB_RETRY_SECONDS = 90.0  # how long a batch's commit is retried while the database is away
Progress = Callable[[int, int], None]  # (ids settled, of which failed)


@dataclass
class DrainResult:
    counters: runs.RunCounters
    banned_until: datetime | None = None
    fatal: str | None = None
    credentials: errors.CredentialsRejected | None = None

    @property
    def failed(self) -> bool:
        return self.fatal is not None or self.counters.failed > 0


def policy(settings: Settings) -> queue.Policy:
    return queue.Policy(
        max_attempts=settings.max_attempts,
        retry_base=settings.retry_base_seconds,
        retry_max=settings.retry_max_seconds,
        not_found_checks=settings.not_found_checks,
        not_found_delay=settings.not_found_delay_seconds,
    )


class Syncer:
    """Drains the queue through the client into the tables, ``settings.lanes`` batches at once."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        client: TopClient,
        run_id: int,
        *,
        progress: Progress | None = None,
        backfill: int | None = None,
        hand: Hand | None = None,
    ) -> None:
        self.settings = settings
        self.backfill = backfill  # claim only this backfill's ids (etl backfill)
        self.engine = engine
        self.client = client
        self.run_id = run_id
        self.worker = f"{runs.host_id()}#{run_id}"
        self.progress = progress
        self.policy = policy(settings)
        self.counters = runs.RunCounters()
        self.quality = Quality()
        self.banned_until: datetime | None = None
        self.fatal: str | None = None
        self.credentials: errors.CredentialsRejected | None = None
        self._last_stats = client.stats.snapshot()
        self._unsaved = runs.RunCounters()  # counted, not yet written to the run's row
        self._ban_logged: datetime | None = None
        # what the hash checks of recent wdk batches found: whether to normalize the next ones
        # in the same pass as reading them (see etl.loading.Mix)
        self.mix = loading.Mix()
        self._expired_looked = -EXPIRED_CLAIM_SECONDS  # monotonic time of the last look
        # a lone backfill's new ids, handed over to this drain without a queue row (etl.handoff)
        self.hand = hand
        if hand is not None:
            hand.bind(self._alone)

    def _alone(self) -> bool:
        """No other process holds a share of the app key's quota (as of the last renewal)."""
        return int(getattr(self.client.flow.pacing, "holders", 1)) <= 1

    def halted(self) -> bool:
        """Nothing more can be fetched in this drain (a long ban, rejected credentials, ...)."""
        return bool(self.fatal or self.banned_until or self.credentials)

    # ------------------------------------------------------------------------------ the loop

    async def drain(
        self,
        stop: asyncio.Event,
        *,
        wait_for_retries: float = 0.0,
        feeding: asyncio.Future[Any] | None = None,
    ) -> DrainResult:
        """Work until nothing is due (then, with ``wait_for_retries``, wait for retries falling
        due within that many seconds), a long ban, a fatal error, or ``stop``. While
        ``feeding`` is not done, more ids are on their way into the queue: nothing due yet
        means waiting for them, not the end."""
        logs.bind(run_id=self.run_id)
        self.credentials = None
        await self._tidy_killed()
        while not stop.is_set():
            if await self._ban_active():
                break
            # The lanes wait for the feeding themselves (see _lane): when they are back, every
            # id fed is worked, unless the drain stops or is halted.
            crew = _Crew(self.settings.lanes)
            await asyncio.gather(*(self._lane(stop, crew, feeding) for _ in range(crew.working)))
            if self.halted() or stop.is_set() or wait_for_retries <= 0:
                break
            try:
                due = await self._db(
                    queue.next_due, timedelta(seconds=wait_for_retries), None, self.backfill
                )
            except errors.DatabaseError:
                due = datetime.now(UTC) + timedelta(seconds=5)
            if due is None:
                break
            await _sleep_until(due, stop)
        self._sync_client_stats()
        if self.credentials is None and self.counters.api_calls:
            await self._credentials_work()
        self.counters.details.update(self.quality.details())
        return DrainResult(self.counters, self.banned_until, self.fatal, self.credentials)

    async def _tidy_killed(self) -> None:
        """Leases and runs of killed processes on this host: released / marked at once."""
        host = socket.gethostname()
        try:
            freed = await self._db(queue.release_dead_local, host, runs.pid_alive)
            await self._db(runs.mark_killed_local, host, runs.pid_alive)
        except errors.DatabaseError:
            return
        if freed:
            log.warning("released %d ids leased by killed processes on this host", freed)

    async def _credentials_work(self) -> None:
        """Calls went through: a standing credentials hold of this app key is over."""
        try:
            hold = await self._db(holds.clear, self.settings.top_app_key)
        except errors.DatabaseError:
            return
        if hold is not None:
            log.warning("credentials accepted again (rejected since %s)", hold.since.isoformat())

    async def _lane(
        self, stop: asyncio.Event, crew: _Crew, feeding: asyncio.Future[Any] | None = None
    ) -> None:
        """Claim and work batches until nothing is due. A lane that finds nothing does not
        leave while the others may still bring work (see :class:`_Crew`): while ``feeding`` it
        waits for the next ids and claims again; otherwise it waits for another lane's claim to
        come back full (more may be due), and leaves when every lane has found nothing. A lane
        that left would not come back before every other lane had finished (the drain's pass
        gathers them): the ids queued meanwhile would be worked by fewer lanes — by one, at
        the worst (measured, capped backfill of 50,000 ids: 3 runs in 7 took 91-93 s instead
        of ~54, one lane at ~28 calls/s of 50)."""
        try:
            await self._lane_loop(stop, crew, feeding)
        finally:
            crew.leave()

    async def _lane_loop(
        self, stop: asyncio.Event, crew: _Crew, feeding: asyncio.Future[Any] | None
    ) -> None:
        size = self.settings.effective_claim_size()
        idle_apis: set[str] = set()
        while not stop.is_set() and not self.halted():
            # before the claims: ids may be fed just after a claim found nothing
            fed = feeding is None or feeding.done()
            progressed = False
            for api in ("wdk", "omni"):
                if api in idle_apis or stop.is_set() or self.halted():
                    continue
                items = await self._claim(api, size)
                if not items:
                    idle_apis.add(api)
                    continue
                progressed = True
                if len(items) >= size:
                    crew.claimed_full()
                await self._batch(api, items)
            if progressed:
                continue
            if not fed:
                assert feeding is not None
                if not feeding.done():
                    await asyncio.wait([feeding], timeout=FEEDING_POLL_SECONDS)
            elif not await crew.idle(stop, self.halted):
                return
            idle_apis.clear()

    async def _claim(self, api: str, size: int) -> list[queue.Item]:
        items = await self._take(api, size)
        if not items:
            items = await self._claim_queued(api, size)
        self.counters.ids_claimed += len(items)
        self._unsaved.ids_claimed += len(items)
        return items

    async def _claim_queued(self, api: str, size: int) -> list[queue.Item]:
        # Expired leases (a dead worker's) are looked for every EXPIRED_CLAIM_SECONDS, not at
        # every claim: the look costs milliseconds mid-backfill, and workers reclaim them too.
        expired = time.monotonic() - self._expired_looked >= EXPIRED_CLAIM_SECONDS
        if expired:
            self._expired_looked = time.monotonic()

        def claim(conn: sa.Connection) -> list[queue.Item]:
            return queue.claim(
                conn,
                api,
                size,
                self.settings.lease_seconds,
                self.worker,
                self.run_id,
                self.backfill,
                expired=expired,
            )

        try:
            items: list[queue.Item] = await self._db(claim)
        except errors.DatabaseError:
            return []  # logged once per outage by _db
        return items

    async def _take(self, api: str, size: int) -> list[queue.Item]:
        """Ids the feeder handed over without queueing them (none without a hand). Once another
        process holds a share of the quota, those still waiting are queued for everyone."""
        if self.hand is None or not self.hand.bound:
            return []
        if not self._alone():  # another process shares the app key now: share the ids too
            spilled = self.hand.spill()
            if spilled:
                log.info(
                    "another process shares the app key: %d ids handed to this backfill "
                    "are queued for every process",
                    len(spilled),
                )
                try:
                    await self._db(queue.queue_handed, spilled, self.backfill)
                except errors.DatabaseError:
                    self.hand.keep(spilled)  # queued when the drain ends (etl.intake.give_back)
            return []
        return self.hand.take(api, size)

    async def _db(self, fn: Callable[..., Any], *args: Any) -> Any:
        """Run ``fn(conn, *args)`` in a transaction on a worker thread."""

        def work() -> Any:
            try:
                with self.engine.begin() as conn:
                    out = fn(conn, *args)
            except (
                sa.exc.OperationalError,
                sa.exc.InterfaceError,
                psycopg.OperationalError,
            ) as exc:
                logs.DB_OUTAGE.failed(db_engine.translate(exc) or exc)
                raise errors.DatabaseError(f"database unavailable: {exc}") from exc
            logs.DB_OUTAGE.ok()
            return out

        return await asyncio.to_thread(work)

    async def _ban_active(self) -> bool:
        try:
            until = await self._db(bans.active, self.settings.top_app_key)
        except errors.DatabaseError:
            return False
        if until is not None:
            self.banned_until = until
            if self._ban_logged != until:  # once per ban, not once per drain
                self._ban_logged = until
                log.warning("app key is banned until %s; leaving work queued", until.isoformat())
            return True
        return False

    # ---------------------------------------------------------------------------- one batch

    async def _batch(self, api: str, items: list[queue.Item]) -> None:
        started = time.monotonic()
        logs.bind(run_id=self.run_id, batch=f"{api}:{items[0].id}+{len(items)}")
        try:
            if api == "wdk":
                orders, outcomes = await self._fetch_wdk(items)
            else:
                orders, outcomes = await self._fetch_omni(items)
        except errors.RateLimited as exc:
            await self._on_long_ban(items, exc)
            return
        except errors.CredentialsRejected as exc:
            await self._on_rejected(items, exc)
            return
        except errors.ClockSkew as exc:
            self.fatal = f"{exc.__class__.__name__}: {exc}"
            log.error("stopping: %s", exc, extra={"run_id": self.run_id})
            await self._release(items, None, str(exc))
            return
        await self._commit(api, items, orders, outcomes)
        self._sync_client_stats()
        metrics.BATCH_SECONDS.labels(api).observe(time.monotonic() - started)

    async def _fetch_wdk(
        self, items: list[queue.Item]
    ) -> tuple[list[load.Encoded], list[queue.Outcome]]:
        by_kind: dict[str, list[queue.Item]] = {}
        for item in items:
            by_kind.setdefault(item.id_kind, []).append(item)
        orders: list[load.Encoded] = []
        outcomes: list[queue.Outcome] = []
        for kind, group in by_kind.items():
            got = await apis.wdk_lookup(
                self._wdk_reader(kind),
                [i.key for i in group],
                kind,
                batch_size=self.settings.batch_size,
                filters=None,
                echo=lambda f: f.echo,
                identity=lambda f: f.biz,
            )
            invalid = {f.echo: f.invalid or "" for f in got.orders if f.order is None}
            digested = {f.echo: f.order for f in got.orders if f.order is not None}
            normalized = await self._with_rows("wdk", digested, invalid)
            orders.extend(normalized.values())
            found = set(normalized)
            for item in group:
                outcomes.append(self._outcome(item, found, got, invalid))
        return orders, outcomes

    def _wdk_reader(self, kind: str) -> Callable[[Mapping[str, Any]], Awaitable[list[Fetched]]]:
        """Reads one wdk call's answer: the body goes to the normalizer pool, which parses,
        digests and (when the recent batches were mostly new or changed) normalizes and
        encodes every order in one pass; this process only moves bytes."""
        echo_field = apis.ID_KINDS[kind].order_field
        normalizer = shared_normalizer(self.settings.normalize_processes)
        encode_all = self.mix.encode_all()

        async def read(business: Mapping[str, Any]) -> list[Fetched]:
            async def body_read(body: bytes) -> list[Fetched]:
                at = datetime.now(UTC)
                pool = normalizer.pool_for_body(body)
                if pool is None:
                    answer = read_wdk_body(body, echo_field, at, encode_all)
                else:
                    answer = await asyncio.get_running_loop().run_in_executor(
                        pool, read_wdk_body, body, echo_field, at, encode_all
                    )
                for note in answer.notes:
                    log.warning(note, extra={"method": apis.WDK_METHOD})
                return answer.orders

            return await self.client.call_body(apis.WDK_METHOD, business, body_read)

        return read

    async def _with_rows(
        self, api: str, digested: dict[str, load.Encoded], invalid: dict[str, str]
    ) -> dict[str, load.Encoded]:
        """Rows for the new and changed ones of a batch's digested orders (see
        :func:`etl.loading.with_rows`); what was odd is noted in the run's quality."""
        done, normalized = await loading.with_rows(
            shared_normalizer(self.settings.normalize_processes),
            loading.stored_lookup(self.engine.connect, api),
            digested,
        )
        self._note(done, invalid, normalized)
        return done

    def _note(
        self, done: dict[str, load.Encoded], invalid: dict[str, str], normalized: int
    ) -> None:
        quality = Quality(invalid_orders=len(invalid))
        for why in invalid.values():
            log.error("order cannot be stored: %s", why)
        for order in done.values():
            quality.note(order)
        self.quality.merge(quality)
        self.counters.details["orders_normalized"] = (
            self.counters.details.get("orders_normalized", 0) + normalized
        )

    def _outcome(
        self,
        item: queue.Item,
        found: set[str],
        got: apis.WdkFetch[Fetched],
        invalid: dict[str, str],
    ) -> queue.Outcome:
        if item.key in found:
            return queue.Outcome(item, "done")
        if item.key in invalid:
            return queue.Outcome(item, "failed", "InvalidOrder", invalid[item.key])
        if item.key in got.failed:
            exc = got.failed[item.key]
            # A permanent refusal of an id isolated by splitting: no retry can help it.
            result = "dead" if isinstance(exc, errors.CallerError) else "failed"
            return queue.Outcome(item, result, exc.error_class, str(exc))
        return queue.Outcome(item, "not_found")

    async def _normalize_all(
        self, api: str, entries: Sequence[tuple[str, dict[str, Any], str | None]]
    ) -> tuple[dict[str, load.Encoded], dict[str, str]]:
        """Digest (key, content hash) the (key, raw, user_id) entries, and normalize only the
        new or changed ones, off the event loop (a process pool; see etl.loading.prepare)."""
        done, invalid, normalized = await loading.prepare(
            shared_normalizer(self.settings.normalize_processes),
            loading.stored_lookup(self.engine.connect, api),
            api,
            list(entries),
            datetime.now(UTC),
        )
        self._note(done, invalid, normalized)
        return done, invalid

    async def _fetch_omni(
        self, items: list[queue.Item]
    ) -> tuple[list[load.Encoded], list[queue.Outcome]]:
        async def one(
            item: queue.Item,
        ) -> tuple[queue.Item, dict[str, Any] | errors.TopError | None]:
            user_id, order_id, out_order_id = omni_parts(item.key)
            try:
                return item, await apis.omni_order_query(
                    self.client, user_id, order_id, out_order_id
                )
            except (errors.RateLimited, errors.CredentialsRejected, errors.ClockSkew):
                raise
            except errors.TopError as exc:
                return item, exc

        results = await asyncio.gather(*(one(i) for i in items))
        entries = [
            (item.key, got, omni_parts(item.key)[0])
            for item, got in results
            if isinstance(got, dict)
        ]
        normalized, invalid = await self._normalize_all("omni", entries)
        outcomes: list[queue.Outcome] = []
        for item, got in results:
            if isinstance(got, errors.TopError):
                outcomes.append(queue.Outcome(item, "failed", got.error_class, str(got)))
            elif got is None:
                outcomes.append(queue.Outcome(item, "not_found"))
            elif item.key in invalid:
                outcomes.append(queue.Outcome(item, "failed", "InvalidOrder", invalid[item.key]))
            else:
                outcomes.append(queue.Outcome(item, "done"))
        return list(normalized.values()), outcomes

    async def _commit(
        self,
        api: str,
        items: list[queue.Item],
        orders: list[load.Encoded],
        outcomes: list[queue.Outcome],
    ) -> None:
        """Load, ack and count in one transaction; retried while the database is unreachable.

        The run's counters move with the batch (``runs.increment``), so a killed run's row says
        exactly what it committed.
        """
        self._sync_client_stats()
        unsaved, self._unsaved = self._unsaved, runs.RunCounters()
        queued = [o for o in outcomes if o.item.queued]
        handed = [o for o in outcomes if not o.item.queued]

        def work(conn: sa.Connection) -> tuple[load.LoadResult, int, list[float]]:
            pg = conn.connection.driver_connection
            assert isinstance(pg, psycopg.Connection)
            result = load.load(pg, api, orders)
            # --- TMC (issue 11): answer message hints before the ack, re-arm orders that
            # changed while being fetched after it; see etl.db.tmc
            s = self.settings
            latencies, still_open = tmc_db.settle(
                conn, api, queued, self.worker, s.lease_seconds, s.tmc_fetch_slack_seconds
            )
            acked = queue.ack(conn, queued, self.policy, self.worker)
            tmc_db.rearm(conn, still_open)  # --- TMC
            # ids handed over unqueued (etl.handoff): their rows, written once, with the outcome
            queue.record_handed(conn, handed, self.policy, self.run_id, self.backfill)
            acked += len(handed)
            delta = self._delta(result, outcomes)
            delta.add(unsaved)
            runs.increment(conn, self.run_id, delta)
            return result, acked, latencies

        deadline = time.monotonic() + DB_RETRY_SECONDS
        delay = 0.5
        while True:
            try:
                result, acked, latencies = await self._db(work)
                break
            except errors.DatabaseError as exc:
                if time.monotonic() > deadline:
                    log.error(
                        "giving up on a batch: %s (its leases expire; ids handed over "
                        "unqueued are queued when the drain ends)",
                        exc,
                    )
                    self._unsaved.add(unsaved)
                    return
                log.debug("database unavailable, retrying the batch in %.1fs", delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        if handed and self.hand is not None:
            self.hand.written(o.item for o in handed)
        if api == "wdk":  # what the next batches will likely be: mostly new / changed or not
            o = result.orders
            self.mix.observe(o.inserted + o.updated, o.inserted + o.updated + o.unchanged + o.stale)
        metrics.observe_freshness(latencies)  # --- TMC: message → row committed
        if acked < len(outcomes):
            log.warning(
                "%d ids were reclaimed by another worker (lease expired)", len(outcomes) - acked
            )
        self._count(api, result, outcomes)

    def _delta(self, result: load.LoadResult, outcomes: list[queue.Outcome]) -> runs.RunCounters:
        """What one committed batch adds to the run's counters (pure)."""
        o = result.orders
        delta = runs.RunCounters(
            orders_inserted=o.inserted,
            orders_updated=o.updated,
            orders_unchanged=o.unchanged,
            orders_stale=o.stale,
        )
        for outcome in outcomes:
            if outcome.result == "not_found":
                delta.not_found += 1
            elif outcome.result in ("failed", "dead"):
                delta.failed += 1
        return delta

    def _count(self, api: str, result: load.LoadResult, outcomes: list[queue.Outcome]) -> None:
        self.counters.add(self._delta(result, outcomes))
        for name in ("inserted", "updated", "unchanged", "stale"):
            metrics.ORDERS.labels(api, name).inc(getattr(result.orders, name))
        settled = failed = 0
        results: Counter[str] = Counter()
        for outcome in outcomes:
            results[outcome.result] += 1
            failed += outcome.result in ("failed", "dead")
            settled += queue.settles(outcome, self.policy)
        for result_name, n in results.items():  # a labelled metric costs µs a call: once each
            metrics.IDS.labels(api, result_name).inc(n)
        if self.progress:
            self.progress(settled, failed)

    async def _on_rejected(self, items: list[queue.Item], exc: errors.CredentialsRejected) -> None:
        """The platform refused our credentials: no id is charged, nothing more is sent; the
        condition is recorded where every process and `etl status` see it."""
        first = self.credentials is None
        self.credentials = exc
        await self._release(items, None, None)
        if not first:
            return
        cap = self.settings.credentials_retry_max_seconds
        with contextlib.suppress(errors.DatabaseError):
            await self._db(
                holds.record,
                self.settings.top_app_key,
                exc.error_class,
                exc.setting,
                str(exc),
                holds.retry_delay(1, cap),
            )

    async def _on_long_ban(self, items: list[queue.Item], exc: errors.RateLimited) -> None:
        until = datetime.now(UTC) + timedelta(seconds=exc.retry_after)
        self.banned_until = until
        log.warning(
            "long flow-control ban: leaving %d ids queued until %s",
            len(items),
            until.isoformat(),
            extra={"sub_code": exc.sub_code},
        )
        await self._release(items, until, f"banned until {until.isoformat()}")
        try:
            await self._db(bans.record, self.settings.top_app_key, until, exc.sub_code, str(exc))
        except errors.DatabaseError as db_exc:
            log.error("cannot record the ban: %s", db_exc)

    async def _release(
        self, items: list[queue.Item], until: datetime | None, reason: str | None
    ) -> None:
        # ids handed over unqueued have no lease to give back: they stay in the hand and are
        # queued when the drain ends (etl.intake.give_back)
        items = [i for i in items if i.queued]
        if not items:
            return
        try:
            await self._db(queue.release, items, self.worker, until, reason)
        except errors.DatabaseError as exc:
            log.error("cannot release %d ids (their lease will expire): %s", len(items), exc)

    def _sync_client_stats(self) -> None:
        now = self.client.stats.snapshot()
        before = self._last_stats
        for target in (self.counters, self._unsaved):
            target.api_calls += now.calls - before.calls
            target.retries += now.retries - before.retries
            target.bans += now.bans - before.bans
        metrics.API_CALLS.labels("sent").inc(now.calls - before.calls)
        metrics.BANS.inc(now.bans - before.bans)
        for cls, n in (now.errors - before.errors).items():
            metrics.ERRORS.labels(cls).inc(n)
        self._last_stats = now


class _Crew:
    """The lanes of one drain pass: how many are still working, and how many of their claims
    came back full. A lane that found nothing waits while the others work, and claims again
    when one of their claims comes back full (more may be due: ids queued by another process
    meanwhile, a backfill fed elsewhere); the pass ends when every lane has found nothing.
    Waiting lanes make no claims: a worker on a trickle of ids costs the database nothing more."""

    def __init__(self, lanes: int) -> None:
        self.working = lanes
        self.full_claims = 0
        self._changed = asyncio.Event()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def claimed_full(self) -> None:
        self.full_claims += 1
        self._notify()

    def leave(self) -> None:
        """A lane is done (by any way out)."""
        self.working -= 1
        self._notify()

    async def idle(self, stop: asyncio.Event, halted: Callable[[], bool]) -> bool:
        """This lane found nothing: wait while another lane works. True: claim again (another
        lane's claim came back full); False: leave (every lane found nothing, or the drain is
        stopping)."""
        self.working -= 1
        self._notify()
        seen = self.full_claims
        try:
            while self.working and self.full_claims == seen:
                if stop.is_set() or halted():
                    return False
                changed = self._changed
                with contextlib.suppress(TimeoutError):  # stop / halted are looked at this often
                    await asyncio.wait_for(changed.wait(), timeout=CREW_POLL_SECONDS)
            return self.full_claims != seen
        finally:
            self.working += 1  # counted again: claiming, or leaving (see leave)


async def _sleep_until(when: datetime, stop: asyncio.Event) -> None:
    seconds = max(0.0, (when - datetime.now(UTC)).total_seconds()) + 0.05
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), timeout=seconds)
