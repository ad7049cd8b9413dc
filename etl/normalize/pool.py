"""Normalizing off the loading process: pure functions of plain data, run in a process pool.

Two steps, both pure (bytes / str / datetimes in, picklable dataclasses out):

* :func:`digest_lines` reads captured response bodies (or single orders), one JSON document a
  line, into :class:`~etl.db.load.Encoded` orders *without rows*: key, canonical content hash,
  raw JSON text. The loader compares the hash with the stored one before anything is normalized.
* :func:`encode_orders` normalizes the orders that are new or changed and formats their rows
  as COPY text, so the loading process only writes bytes.

:class:`Normalizer` runs them in a ``forkserver`` process pool with bounded work in flight, or in
the calling thread when the batch is too small for the hand-off to pay (``IN_THREAD_BELOW``) or
when ``processes`` is 0. Worker processes ignore SIGINT / SIGTERM: the parent decides when to
stop (batches in flight finish) and shuts the pool down, so a signal never leaves orphans or
tracebacks behind.
"""

from __future__ import annotations

import atexit
import contextlib
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar

from etl import errors
from etl.db.load import Encoded, renormalize
from etl.normalize.orders import InvalidOrder, digest
from etl.top import apis, envelope

T = TypeVar("T")

# Below this many orders a batch is normalized in the calling thread. Measured (2 cores): a
# hand-off to a process costs ~0.5-0.75 ms whatever the size (pickling both ways, a wake-up),
# normalizing + encoding ~0.15 ms an order in-thread; under ~8 orders the hand-off saves the
# loading process less than it costs the machine.
IN_THREAD_BELOW = 8
IN_THREAD_BELOW_BYTES = 32 << 10  # the same for an answer's body (~8 orders of ~4-5 KB)

OWNER_POLL_SECONDS = 1.0  # how soon a worker notices its owner process was killed

METHODS = {"wdk": apis.WDK_METHOD, "omni": apis.OMNI_METHOD}


@dataclass
class Digested:
    """One batch of lines read: the orders found, and what could not be read, by line.
    ``encoded``: the orders were normalized and encoded too (every one has its rows)."""

    orders: list[Encoded] = field(default_factory=list)
    errors: list[tuple[str, str]] = field(default_factory=list)  # (where: file:line, why)
    lines: int = 0
    encoded: bool = False


def _documents(api: str, doc: Any, wrapped: bool = True) -> list[dict[str, Any]]:
    """The orders of one JSON document: a whole response body (either shape) or one order.
    ``wrapped=False``: the text has no default-shape list wrapping (see
    :func:`envelope.has_wrapping`)."""
    if not isinstance(doc, dict):
        raise errors.MalformedResponse(f"a JSON {type(doc).__name__}, not an object")
    if "error_response" in doc:
        err = doc["error_response"]
        raise envelope.classify(err if isinstance(err, dict) else {"msg": str(err)}, METHODS[api])
    wrapper = METHODS[api].replace(".", "_") + "_response"
    inner = doc.get(wrapper, doc)
    if not isinstance(inner, dict):
        raise errors.MalformedResponse(f"{wrapper} is a {type(inner).__name__}, not an object")
    unwrap = envelope.unwrap_lists if wrapped else _same
    if "result" not in inner:  # a single order object
        return [unwrap(inner)]
    payload = unwrap(inner)
    if api == "wdk":
        return apis.wdk_orders(payload)
    model = apis.omni_model(payload)
    return [model] if model is not None else []


def _same(value: dict[str, Any]) -> dict[str, Any]:
    return value


def digest_lines(
    api: str,
    lines: Sequence[tuple[str, bytes]],
    fetched_at: datetime,
    user_id: str | None = None,
    encode_all: bool = False,
) -> Digested:
    """Read ``(where, JSON line)`` pairs; a bad line is recorded with its ``where``, never
    fatal.

    ``encode_all``: normalize and encode every order as well, in the same pass (see
    :func:`_encode_parsed`) — for batches expected to be mostly new or changed (a first load),
    where a second hand-off with the raw text and a second parse would cost more than encoding
    the few orders the hash check then finds unchanged."""
    out = Digested(lines=len(lines), encoded=encode_all)
    for where, line in lines:
        try:
            wrapped = envelope.has_wrapping(line)
            has_nul = encode_all and b"\\u0000" in line
            for order in _documents(api, envelope.decode(line), wrapped):
                out.orders.append(_digest_one(api, order, fetched_at, user_id, encode_all, has_nul))
        except (errors.TopError, InvalidOrder) as exc:
            out.errors.append((where, f"{exc.__class__.__name__}: {exc}"))
    return out


def _digest_one(
    api: str,
    order: dict[str, Any],
    fetched_at: datetime,
    user_id: str | None,
    encode_all: bool,
    has_nul: bool,
) -> Encoded:
    """One order (simplified shape) digested, and with ``encode_all`` normalized and encoded
    too; ``has_nul``: its text has an escaped NUL (encoded from the stored text, see
    :func:`_encode_parsed`)."""
    raw, d = digest(api, order, simplified=True)
    found = Encoded(api, d.key, d.payload_hash, fetched_at, d.raw, user_id)
    return _encode_parsed(found, None if has_nul else raw) if encode_all else found


@dataclass
class Fetched:
    """One order of a fetched answer: the requested id it answers (``echo``), its
    biz_order_id, and the order digested (with rows when encoded) or why it cannot be stored."""

    echo: str
    biz: str
    order: Encoded | None
    invalid: str | None = None


@dataclass
class Answer:
    """The orders of one alibaba.wdk.order.get answer, and the warnings to log about it."""

    orders: list[Fetched] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def read_wdk_body(body: bytes, echo_field: str, fetched_at: datetime, encode_all: bool) -> Answer:
    """An alibaba.wdk.order.get answer's body → its orders digested (and, with ``encode_all``,
    normalized and encoded in the same pass): the sync loop's counterpart of
    :func:`digest_lines`, run in the pool so the process making the calls only moves bytes.

    Raises what the client's own reading raises: the classified :class:`errors.TopError` of an
    error envelope, :class:`errors.MalformedResponse`, :class:`errors.BusinessError`."""
    out = Answer()
    orders = envelope.parsed(body, apis.WDK_METHOD, lambda p: apis.wdk_orders(p, out.notes))
    has_nul = encode_all and b"\\u0000" in body
    for order in orders:
        echo, biz = str(order.get(echo_field)), str(order.get("biz_order_id"))
        try:
            found = _digest_one("wdk", order, fetched_at, None, encode_all, has_nul)
        except InvalidOrder as exc:
            out.orders.append(Fetched(echo, biz, None, str(exc)))
            continue
        out.orders.append(Fetched(echo, biz, found))
    return out


def _encode_parsed(order: Encoded, parsed: dict[str, Any] | None) -> Encoded:
    """Normalize and encode ``order`` from its simplified dict ``parsed`` (None: from its raw
    text — the path for a line with an escaped NUL, as the stored text drops NULs)."""
    encoded = renormalize(order, parsed)
    encoded.raw = b""  # already in its archive line: not sent back to the loader twice
    return encoded


def digest_orders(
    api: str, entries: Iterable[tuple[str, dict[str, Any], str | None]], fetched_at: datetime
) -> tuple[dict[str, Encoded], dict[str, str]]:
    """Orders already parsed by the platform client (the simplified shape: its payloads are
    unwrapped once, see :func:`envelope.payload`), by caller key; and the invalid ones."""
    done: dict[str, Encoded] = {}
    invalid: dict[str, str] = {}
    for key, raw, user_id in entries:
        try:
            _, d = digest(api, raw, simplified=True)
        except InvalidOrder as exc:
            invalid[key] = str(exc)
            continue
        done[key] = Encoded(api, d.key, d.payload_hash, fetched_at, d.raw, user_id)
    return done, invalid


def encode_orders(orders: Sequence[Encoded]) -> list[Encoded]:
    """Normalize and encode orders kept as raw JSON text (their hash is already known)."""
    return [_encode_parsed(order, None) for order in orders]


def _quiet_worker(owner: int) -> None:
    # The parent owns shutdown: a Ctrl-C / SIGTERM to the process group must not kill a
    # worker mid-batch (the parent finishes the batches in flight, then closes the pool).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # A parent killed outright (SIGKILL, OOM) never closes the pool, and a worker holding its
    # own call queue's write end would wait for work forever: it leaves when its owner is gone.
    threading.Thread(target=_exit_with, args=(owner,), daemon=True, name="owner-watch").start()


def _exit_with(owner: int) -> None:
    while True:
        time.sleep(OWNER_POLL_SECONDS)
        try:
            os.kill(owner, 0)
        except ProcessLookupError:
            os._exit(0)
        except PermissionError:  # the pid now belongs to another user's process
            os._exit(0)


def _done(value: T) -> Future[T]:
    fut: Future[T] = Future()
    fut.set_result(value)
    return fut


class Normalizer:
    """Runs :func:`digest_lines` / :func:`encode_orders` off the loading process."""

    def __init__(self, processes: int) -> None:
        self.processes = processes
        self._pool: ProcessPoolExecutor | None = None
        self._warmed = False

    @property
    def executor(self) -> Executor | None:
        """The process pool (started on first use), or None when normalizing in-thread."""
        if self.processes <= 0:
            return None
        if self._pool is None:
            context = multiprocessing.get_context("forkserver")
            # The server imports the normalizer once; each worker is a fork of it, ready at once.
            context.set_forkserver_preload([__name__])
            self._pool = ProcessPoolExecutor(
                max_workers=self.processes,
                mp_context=context,
                initializer=_quiet_worker,
                initargs=(os.getpid(),),
            )
        return self._pool

    def warm(self) -> None:
        """Start the pool's processes now, in the background: a command that will make calls
        starts them while it reads its input and connects, so its first answers do not wait for
        them (measured, uncapped backfill, 2 cores: ~1 s from the first answer to its rows)."""
        pool = self.executor
        if pool is None or self._warmed:
            return
        self._warmed = True

        def start() -> None:
            with contextlib.suppress(RuntimeError):  # shut down meanwhile
                for _ in range(self.processes):
                    pool.submit(os.getpid)

        threading.Thread(target=start, daemon=True, name="normalizer-warm").start()

    def pool_for(self, size: int) -> Executor | None:
        """The pool for a batch of ``size`` orders; None: do it in a thread of this process."""
        return self.executor if size >= IN_THREAD_BELOW else None

    def pool_for_body(self, body: bytes) -> Executor | None:
        """:meth:`pool_for` an answer's body, by its size."""
        return self.executor if len(body) >= IN_THREAD_BELOW_BYTES else None

    def submit(self, size: int, fn: Callable[..., T], *args: Any) -> Future[T]:
        """``fn(*args)`` in the pool, or now in this thread for a batch of fewer than
        IN_THREAD_BELOW orders (or without a pool)."""
        pool = self.pool_for(size)
        if pool is None:
            try:
                return _done(fn(*args))
            except BaseException as exc:
                fut: Future[T] = Future()
                fut.set_exception(exc)
                return fut
        return pool.submit(fn, *args)

    def worker_pids(self) -> list[int]:
        """The pool's processes (for measuring them)."""
        return list(self._pool._processes) if self._pool is not None else []

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True, cancel_futures=True)
            self._pool = None
            self._warmed = False

    def __enter__(self) -> Normalizer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


_SHARED: dict[int, Normalizer] = {}


def shared_normalizer(processes: int) -> Normalizer:
    """One normalizer per process count for the whole process (the sync loop's batches share
    it); shut down at exit, after the batches in flight."""
    if processes not in _SHARED:
        if not _SHARED:
            atexit.register(_close_shared)
        _SHARED[processes] = Normalizer(processes)
    return _SHARED[processes]


def _close_shared() -> None:
    for normalizer in _SHARED.values():
        normalizer.close()
    _SHARED.clear()
