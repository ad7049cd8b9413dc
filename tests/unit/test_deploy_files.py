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


def _stages() -> list[list[str]]:
    """The Dockerfile's instructions (continuation lines joined), one list per stage."""
    text = (ROOT / "Dockerfile").read_text(encoding="utf-8").replace("\\\n", " ")
    stages: list[list[str]] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.upper().startswith("FROM "):
            stages.append([])
        stages[-1].append(line)
    return stages


def test_image_is_multi_stage_and_installs_the_built_wheel() -> None:
    build, runtime = _stages()[0], _stages()[-1]
    assert len(_stages()) >= 2
    copied = " ".join(line for line in build if line.startswith("COPY"))
    # Everything setup.py needs to build a wheel that carries its migrations.
    for needed in ("pyproject.toml", "setup.py", "README.md", "etl", "migrations"):
        assert re.search(rf"(^|\s){re.escape(needed)}(\s|$)", copied), needed
    assert any("pip wheel" in line for line in build)
    assert any(line.startswith("COPY --from=") for line in runtime)
    installs = [line for line in runtime if "pip install" in line]
    assert installs
    assert all(".whl" in line for line in installs)
    assert not any(" -e " in line or "--editable" in line for line in installs)
    assert not any(line.startswith("COPY") and "--from=" not in line for line in runtime)


def test_image_runs_as_a_non_root_user() -> None:
    users = [line.split()[1] for line in _stages()[-1] if line.startswith("USER ")]
    assert users, "the runtime stage never leaves root"
    assert users[-1].split(":")[0] not in {"root", "0"}


def test_image_worker_serves_metrics_and_is_health_checked() -> None:
    runtime = _stages()[-1]
    cmd = next(line for line in runtime if line.startswith("CMD "))
    assert "--metrics-port" in cmd
    assert "9108" in cmd
    assert any(line.startswith("EXPOSE") and "9108" in line for line in runtime)
    health = next(line for line in runtime if line.startswith("HEALTHCHECK"))
    assert "9108/metrics" in health


def test_compose_builds_one_image_for_migrate_and_worker() -> None:
    services = _compose()["services"]
    built = [name for name, svc in services.items() if "build" in svc]
    assert built == ["migrate"], "build the image once, in one service"
    assert services["migrate"]["image"] == services["etl"]["image"]
    assert services["etl"].get("pull_policy") == "never"


def test_compose_worker_exposes_metrics_and_has_a_healthcheck() -> None:
    worker = _compose()["services"]["etl"]
    command = worker["command"]
    port = command[command.index("--metrics-port") + 1]
    assert port in {str(p).split(":")[-1] for p in worker.get("expose", [])}
    assert f"{port}/metrics" in " ".join(worker["healthcheck"]["test"])


def test_compose_requires_a_postgres_password() -> None:
    text = (ROOT / "docker-compose.yml").read_text(encoding="utf-8")
    uses = re.findall(r"\$\{POSTGRES_PASSWORD([^}]*)\}", text)
    assert len(uses) >= 2, "the password must reach both postgres and ETL_DATABASE_URL"
    assert all(u.startswith(":?") for u in uses), f"defaulted password: {uses}"


def test_ci_installs_the_wheel_in_a_fresh_venv_and_runs_it_elsewhere() -> None:
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "pip wheel" in ci
    assert re.search(r"python3 -m venv \"\$dist/venv\"", ci)
    assert re.search(r"cd \"\$dist\"", ci)
    for command in ("--help", "migrate"):
        assert re.search(rf"venv/bin/etl\" {command}", ci), command
