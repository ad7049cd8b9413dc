"""Prometheus metrics (served by ``etl worker --metrics-port``)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram, start_http_server

API_CALLS = Counter("etl_api_calls_total", "Platform calls made, by outcome", ["outcome"])
ERRORS = Counter("etl_errors_total", "Errors met, by class", ["error_class"])
BANS = Counter("etl_bans_total", "Flow-control bans met")
QUEUE_DEPTH = Gauge("etl_queue_depth", "Rows in sync_queue, by api and state", ["api", "state"])
ORDERS = Counter("etl_orders_total", "Orders loaded, by api and result", ["api", "result"])
IDS = Counter("etl_ids_total", "Queue ids settled, by api and outcome", ["api", "outcome"])
BATCH_SECONDS = Histogram(
    "etl_batch_seconds",
    "Seconds per batch (claim to commit), by api",
    ["api"],
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120),
)


def serve(port: int, host: str = "0.0.0.0") -> None:  # noqa: S104 - scraped from outside
    start_http_server(port, addr=host)


# --- the platform's message service (TMC)
TMC_MESSAGES = Counter(
    "etl_tmc_messages_total",
    "TMC messages pulled, by topic and what was done (queued, unhandled, unreadable)",
    ["topic", "outcome"],
)
TMC_FRESHNESS = Histogram(
    "etl_tmc_freshness_seconds",
    "From a TMC message's pub_time to the order's row committed (pub_time has 1 s resolution)",
    buckets=(0.5, 1, 2, 3, 5, 10, 20, 30, 60, 120, 300, 900, 3600),
)


def observe_freshness(latencies: list[float]) -> None:
    for seconds in latencies:
        TMC_FRESHNESS.observe(seconds)
