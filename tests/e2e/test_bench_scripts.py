"""Every benchmark script starts as its README says (`python bench/NAME.py`), from any directory.

Run as a script, a file's own directory comes first on sys.path, and bench/queue.py would shadow
the standard library's queue (which asyncio and psycopg import) in every other script there.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("*.py") if not p.name.startswith("_"))


def test_there_are_scripts() -> None:
    assert "queue.py" in SCRIPTS
    assert "load.py" in SCRIPTS


@pytest.mark.parametrize("name", SCRIPTS)
def test_a_benchmark_script_imports_and_shows_its_help(name: str, tmp_path: Path) -> None:
    run = subprocess.run(
        [sys.executable, str(BENCH / name), "--help"],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "usage:" in run.stdout
