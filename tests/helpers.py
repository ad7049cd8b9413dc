"""Helpers shared by tests (not fixtures): settings aimed at a simulator."""

from __future__ import annotations

from typing import Any

from etl.settings import Settings, load_settings

FAST = {
    "top_backoff_base": "0.01",
    "top_backoff_max": "0.05",
    "top_qps": "1000",
    "concurrency": "8",
}


def settings_for(url: str, **overrides: Any) -> Settings:
    """Settings for a client of the simulator at ``url`` (no config file, fast retries)."""
    values: dict[str, Any] = {"top_url": url, **FAST}
    values.update({k: str(v) for k, v in overrides.items()})
    return load_settings(values, env={"ETL_CONFIG": ""})
