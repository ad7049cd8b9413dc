"""A built wheel, installed (not editable) into a fresh virtualenv, works from any directory.

Real processes all the way: the wheel is built from a copy of the sources the Dockerfile's build
stage copies, installed with pip (dependencies from the pip cache / the package index), and its
`etl` run from an empty directory on an embedded cluster of its own.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
# What the Dockerfile's build stage copies (tests/unit/test_deploy_files.py checks it does).
SOURCES = (
    "pyproject.toml",
    "setup.py",
    "MANIFEST.in",
    "README.md",
    "alembic.ini",
    "etl",
    "migrations",
)

pytestmark = pytest.mark.slow


def _run(cmd: list[str], cwd: Path, env: dict[str, str], timeout: float = 300) -> str:
    result = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    assert result.returncode == 0, f"{cmd} -> {result.returncode}\n{result.stdout}\n{result.stderr}"
    return result.stdout


@pytest.fixture(scope="module")
def scratch() -> Iterator[Path]:
    """A directory outside pytest's tmp root, which another pytest session may close to every
    user but root while this one runs: the embedded server runs as the user 'pgserver' when the
    tests run as root, and needs to reach both the venv's binaries and its data directory."""
    path = Path(tempfile.mkdtemp(prefix="etl-test-wheel-"))
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def installed(scratch: Path) -> Path:
    """The bin directory of a fresh virtualenv with the wheel installed."""
    base = scratch
    src = base / "src"
    src.mkdir()
    for name in SOURCES:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, src / name, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy2(path, src / name)
    env = dict(os.environ)
    _run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(base / "dist"),
            str(src),
        ],
        base,
        env,
    )
    (wheel,) = (base / "dist").glob("etl-*.whl")
    _run([sys.executable, "-m", "venv", str(base / "venv")], base, env)
    bin_dir = base / "venv" / "bin"
    _run([str(bin_dir / "pip"), "install", "-q", str(wheel)], base, env, timeout=900)
    return bin_dir


def _etl_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.pop("PYTHONPATH", None)
    env.update(ETL_CONFIG="", ETL_DATA_DIR=str(data_dir), ETL_LOG_LEVEL="WARNING")
    return env


def test_the_installed_package_carries_its_migrations(installed: Path, scratch: Path) -> None:
    tmp_path = scratch / "t1"
    tmp_path.mkdir()
    out = _run(
        [
            str(installed / "python"),
            "-c",
            "from etl.db import migrate; print(migrate.script_location())",
        ],
        tmp_path,
        _etl_env(tmp_path / "data"),
    )
    location = Path(out.strip())
    assert location.is_relative_to(installed.parent), location  # inside the venv, not the checkout
    assert sorted(p.name for p in (location / "versions").glob("0*.py")) == sorted(
        p.name for p in (ROOT / "migrations" / "versions").glob("0*.py")
    )


@pytest.mark.skipif(bool(os.environ.get("ETL_DATABASE_URL")), reason="tests the embedded default")
def test_etl_commands_work_from_another_directory(installed: Path, scratch: Path) -> None:
    tmp_path = scratch / "t2"
    cwd = tmp_path / "elsewhere"
    cwd.mkdir(parents=True)
    env = _etl_env(tmp_path / "data")
    etl = str(installed / "etl")
    assert "migrate" in _run([etl, "--help"], cwd, env)
    assert "0.1.0" in _run([etl, "--version"], cwd, env)
    assert "schema upgraded empty ->" in _run([etl, "migrate"], cwd, env)
    assert "schema already at" in _run([etl, "migrate"], cwd, env)
    demo = _run([etl, "demo", "--wdk", "40", "--omni", "4", "--fault-rate", "0"], cwd, env)
    assert "report_daily_sales" in demo or "orders" in demo
    status = _run([etl, "status"], cwd, env)
    assert "wdk" in status
    assert list(cwd.iterdir()) == []  # nothing was needed from (or left in) the working directory
