"""The simulator's message service: orders that change over time, and the TMC stream they publish.

A :class:`TmcStream` holds the current status of every order it has moved (the simulator's
``alibaba.wdk.order.get`` serves orders through :meth:`TmcStream.apply`, so what it serves
follows the stream) and the messages not yet confirmed. Orders move PAID → PACKAGED → SUCCESS;
some are refunded (REFUNDED). Each change publishes a message on a WDK order topic; some are
published twice, some out of order, some messages are of another topic and a few are unreadable
(noise: every change has a readable message). A consumed message not confirmed within
``redelivery_seconds`` is delivered again. Thread-safe: tests publish from their own thread.
"""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from etl import chinatime
from etl.simulator import data

CONSUME_METHOD = "taobao.tmc.messages.consume"
CONFIRM_METHOD = "taobao.tmc.messages.confirm"
FIRST_MESSAGE_ID = 7_104_300_007_405_429_232  # 19 digits, like the platform's
NEXT_STATUS = {"PAID": "PACKAGED", "PACKAGED": "SUCCESS", "DELIVERING": "SUCCESS"}
FINAL = ("SUCCESS", "REFUNDED")
STATUS_TOPICS = (  # (topic, whether biz_order_id is sent as a string)
    ("alibaba_wdkorder_StatusChange", False),
    ("alibaba_wdkopen_OrderMessage", False),
    ("alibaba_wdk_ChannelOrderStatusChange", True),
)
CANCEL_TOPIC = "alibaba_wdk_ChannelOrderCancel"
OTHER_TOPIC = "taobao_item_ItemStockChanged"
SELLER = (2_206_573_000_001, "盒马测试店")


class TmcError(Exception):
    """A request the gateway refuses (the server turns it into an error_response)."""

    def __init__(self, code: int, msg: str, sub_code: str, sub_msg: str) -> None:
        super().__init__(msg)
        self.code, self.msg, self.sub_code, self.sub_msg = code, msg, sub_code, sub_msg


@dataclass
class TmcConfig:
    rate: float = 0.0  # order changes per second published by the stream; 0 = no stream
    first_id: int = data.FIRST_DEMO_BIZ_ID  # the stream moves orders first_id .. + orders - 1
    orders: int = 1000
    redelivery_seconds: float = 30.0  # an unconfirmed message comes back after this
    duplicate_rate: float = 0.05
    reorder_rate: float = 0.05  # messages held back and published after the next one
    other_topic_rate: float = 0.05  # extra messages of a topic etl does not handle
    unreadable_rate: float = 0.01  # extra messages whose content cannot be read
    refund_rate: float = 0.1  # changes that refund the order instead of moving it on
    groups: tuple[str, ...] = ("default",)


@dataclass
class TmcCounters:
    changes: int = 0
    published: int = 0
    delivered: int = 0
    redelivered: int = 0
    confirmed: int = 0
    consume_calls: int = 0
    confirm_calls: int = 0
    by_topic: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        return {k: (dict(v) if isinstance(v, dict) else v) for k, v in self.__dict__.items()}


class TmcStream:
    def __init__(
        self,
        config: TmcConfig,
        seed: int,
        base_order: Callable[[int], dict[str, Any] | None],
    ) -> None:
        """``base_order(biz)``: the order as generated (before the stream moved it), or None
        when it does not exist."""
        self.config = config
        self.base_order = base_order
        self.counters = TmcCounters()
        self.status: dict[int, str] = {}  # biz_order_id -> current order_status
        self.changed_at: dict[int, float] = {}  # biz_order_id -> time.time() of the last change
        self._rng = random.Random(f"{seed}:tmc")
        self._lock = threading.Lock()
        self._next_id = FIRST_MESSAGE_ID
        self._ready: deque[dict[str, Any]] = deque()
        self._inflight: dict[int, tuple[dict[str, Any], float]] = {}
        self._held: dict[str, Any] | None = None
        self._streaming = threading.Event()

    # ------------------------------------------------------------------------ order state

    def apply(self, order: dict[str, Any]) -> dict[str, Any]:
        """The order as it is now (the stream's status over the generated one)."""
        status = self.status.get(int(order["biz_order_id"]))
        if status is None:
            return order
        order["order_status"] = status
        for sub in order.get("sub_orders") or []:
            sub["order_status"] = status
        return order

    def current_status(self, biz: int) -> str:
        with self._lock:
            known = self.status.get(biz)
        if known is not None:
            return known
        order = self.base_order(biz)
        return str(order["order_status"]) if order else "SUCCESS"  # missing: never moved

    def change_one(self) -> int | None:
        """Move one order on (or refund it) and publish its message; the order id, or None."""
        cfg = self.config
        for _ in range(20):
            biz = cfg.first_id + self._rng.randrange(cfg.orders)
            now = self.current_status(biz)
            if now in FINAL:
                continue
            refund = self._rng.random() < cfg.refund_rate
            new = "REFUNDED" if refund else NEXT_STATUS.get(now, "SUCCESS")
            with self._lock:
                self.status[biz] = new
                self.changed_at[biz] = time.time()
                self.counters.changes += 1
            self._publish_change(biz, new)
            return biz
        return None

    def _publish_change(self, biz: int, status: str) -> None:
        rng, cfg = self._rng, self.config
        if status == "REFUNDED":
            topic, as_text = CANCEL_TOPIC, True
            content: dict[str, Any] = {"whole_cancel": "true", "out_order_id": f"ele{biz}"}
        else:
            topic, as_text = rng.choice(STATUS_TOPICS)
            content = {"order_status": status, "out_order_id": f"ele{biz}", "order_from": 3}
        content = {"biz_order_id": str(biz) if as_text else biz, **content}
        message = self._message(topic, orjson.dumps(content).decode())
        if rng.random() < cfg.reorder_rate and self._held is None:
            self._held = message  # published after the next message
            return
        self._push(message)
        if rng.random() < cfg.duplicate_rate:
            self._push(self._message(topic, message["content"], message["pub_time"]))
        if rng.random() < cfg.other_topic_rate:
            stock = {"num_iid": 560_540_000_000 + rng.randrange(10**6), "nick": SELLER[1]}
            self._push(self._message(OTHER_TOPIC, orjson.dumps(stock).decode()))
        if rng.random() < cfg.unreadable_rate:
            self._push(self._message(topic, '{"biz_order_id": ' + str(biz)[:6]))

    # ------------------------------------------------------------------------- publishing

    def publish(self, topic: str, content: str, pub_time: str | None = None) -> int:
        """Publish one message as given (tests); returns its id."""
        message = self._message(topic, content, pub_time)
        self._push(message)
        return int(message["id"])

    def _message(self, topic: str, content: str, pub_time: str | None = None) -> dict[str, Any]:
        with self._lock:
            mid = self._next_id
            self._next_id += 1
        return {
            "id": mid,
            "topic": topic,
            "content": content,
            "user_id": SELLER[0],
            "user_nick": SELLER[1],
            "pub_time": pub_time or chinatime.now_text(),
            "pub_app_key": "12499723",
        }

    def _push(self, message: dict[str, Any]) -> None:
        with self._lock:
            self._ready.append(message)
            self.counters.published += 1
            topic = str(message["topic"])
            self.counters.by_topic[topic] = self.counters.by_topic.get(topic, 0) + 1
            held, self._held = self._held, None
            if held is not None and held is not message:
                self._ready.append(held)
                self.counters.published += 1
                self.counters.by_topic[held["topic"]] = (
                    self.counters.by_topic.get(held["topic"], 0) + 1
                )

    def flush(self) -> None:
        """Publish a held-back message now (when the stream stops)."""
        with self._lock:
            held, self._held = self._held, None
        if held is not None:
            self._push(held)

    # ---------------------------------------------------------------------------- the API

    def consume(self, p: dict[str, str]) -> dict[str, Any]:
        self._group(p)
        text = p.get("quantity") or "100"
        if not text.isdigit() or not 10 <= int(text) <= 200:
            raise TmcError(41, "Invalid Arguments", "isv.invalid-parameter", "quantity:10-200")
        now = time.monotonic()
        with self._lock:
            self.counters.consume_calls += 1
            due = [mid for mid, (_, at) in self._inflight.items() if at <= now]
            for mid in due:  # unconfirmed for too long: delivered again
                message, _ = self._inflight.pop(mid)
                self._ready.appendleft(message)
                self.counters.redelivered += 1
            taken: list[dict[str, Any]] = []
            while self._ready and len(taken) < int(text):
                message = self._ready.popleft()
                self._inflight[int(message["id"])] = (message, now + self.config.redelivery_seconds)
                taken.append(message)
            self.counters.delivered += len(taken)
        return {"messages": taken} if taken else {}

    def confirm(self, p: dict[str, str]) -> dict[str, Any]:
        self._group(p)
        raw = p.get("s_message_ids") or ""
        if not raw:
            raise TmcError(
                40, "Missing Required Arguments", "isv.missing-parameter", "s_message_ids"
            )
        parts = raw.split(",")
        if len(parts) > 200 or not all(x.strip().isdigit() for x in parts):
            raise TmcError(41, "Invalid Arguments", "isv.invalid-parameter", "s_message_ids")
        ids = {int(x) for x in parts}
        with self._lock:
            self.counters.confirm_calls += 1
            for mid in ids:
                if self._inflight.pop(mid, None) is not None:
                    self.counters.confirmed += 1
            if any(int(m["id"]) in ids for m in self._ready):  # confirmed after a redelivery
                self._ready = deque(m for m in self._ready if int(m["id"]) not in ids)
        return {"is_success": True}

    def _group(self, p: dict[str, str]) -> None:
        group = p.get("group_name") or "default"
        if group not in self.config.groups:
            raise TmcError(
                41, "Invalid Arguments", "isv.group-not-exist", f"group {group} does not exist"
            )

    def unconfirmed(self) -> int:
        """Messages published and not confirmed yet (waiting or in flight)."""
        with self._lock:
            return len(self._ready) + len(self._inflight) + (1 if self._held else 0)

    # ---------------------------------------------------------------------------- stream

    def streaming(self) -> bool:
        return self._streaming.is_set()

    def stop_stream(self) -> None:
        self._streaming.clear()

    async def run(self, seconds: float | None = None) -> None:
        """Publish ``rate`` changes per second (for ``seconds``, or until stopped)."""
        if self.config.rate <= 0:
            return
        self._streaming.set()
        loop = asyncio.get_running_loop()
        started = loop.time()
        n = 0
        while self._streaming.is_set():
            if seconds is not None and loop.time() - started >= seconds:
                break
            self.change_one()
            n += 1
            await asyncio.sleep(max(0.0, started + n / self.config.rate - loop.time()))
        self._streaming.clear()
        self.flush()
