"""The embedded default: concurrent etl processes on one data directory share one cluster."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


@pytest.mark.skipif(bool(os.environ.get("ETL_DATABASE_URL")), reason="tests the embedded default")
def test_concurrent_processes_on_one_fresh_data_dir(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETL_")}
    env.update(ETL_DATA_DIR=str(tmp_path / "data"), ETL_CONFIG="")
    procs = [
        subprocess.Popen(
            [sys.executable, "-m", "etl", "migrate"],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    results = [p.communicate(timeout=180) for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], [err for _, err in results]
    outs = sorted(out for out, _ in results)
    assert sum("schema upgraded empty" in o for o in outs) == 1  # one migrated, the others saw it
    assert sum("schema already at" in o for o in outs) == 2
    again = subprocess.run(
        [sys.executable, "-m", "etl", "status"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert again.returncode == 0, again.stderr
    assert "queue is empty" in again.stdout
