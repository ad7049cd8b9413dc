"""docker-compose.yml and the Dockerfile agree with the real settings and commands."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from etl.settings import FIELD_NAMES, env_name

ROOT = Path(__file__).resolve().parents[2]
KNOWN = {env_name(f) for f in FIELD_NAMES} | {"ETL_CONFIG"}


def _compose() -> dict[str, Any]:
    data = yaml.safe_load((ROOT / "docker-compose.yml").read_text(encoding="utf-8"))
    assert isinstance(data, dict)
    return data


def test_every_etl_name_in_compose_is_a_real_setting() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    used = set(re.findall(r"\bETL_[A-Z_]+\b", text))
    assert used, "compose file wires no ETL_* setting"
    assert used <= KNOWN, f"unknown settings in docker-compose.yml: {sorted(used - KNOWN)}"


def test_compose_services_are_wired() -> None:
    services = _compose()["services"]
    assert {"postgres", "migrate", "etl"} <= set(services)
    assert services["postgres"]["image"].startswith("postgres:")
    assert "healthcheck" in services["postgres"]
    assert services["migrate"]["command"] == ["migrate"]
    assert services["migrate"]["depends_on"]["postgres"]["condition"] == "service_healthy"
    deps = services["etl"]["depends_on"]["migrate"]["condition"]
    assert deps == "service_completed_successfully"
    for name in ("migrate", "etl"):
        env = services[name]["environment"]
        assert set(env) <= KNOWN
        assert "ETL_DATABASE_URL" in env
        assert "@postgres:5432/" in env["ETL_DATABASE_URL"]
    assert "pgdata" in _compose()["volumes"]


def test_compose_commands_exist() -> None:
    from etl.cli import main

    services = _compose()["services"]
    for name in ("migrate", "etl"):
        assert services[name]["command"][0] in main.commands, services[name]["command"]
