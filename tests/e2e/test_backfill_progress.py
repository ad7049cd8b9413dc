"""A backfill that is not on a terminal (cron, nohup, a container) logs plain progress lines at a
steady interval instead of nothing until its summary: a real `etl backfill` process."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from etl.simulator import data
from etl.simulator.server import SimulatorConfig, SimulatorThread
from tests.helpers import etl_cmd, etl_env


def test_backfill_off_a_terminal_logs_progress_at_an_interval(db_url: str, tmp_path: Path) -> None:
    n = 300
    path = tmp_path / "ids.txt"
    path.write_text("\n".join(str(data.FIRST_DEMO_BIZ_ID + i) for i in range(n)) + "\n")
    with SimulatorThread(SimulatorConfig(missing_rate=0.0)) as sim:
        # 15 calls of 20 ids at 5 calls/s: about 3 s, several intervals of 0.5 s.
        env = etl_env(db_url, sim.url, top_qps=5, batch_size=20, log_level="INFO")
        result = subprocess.run(
            etl_cmd("backfill", "--file", str(path), "--progress-seconds", "0.5"),
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,  # stderr is a pipe, not a terminal
            text=True,
            timeout=120,
            check=False,
        )
    assert result.returncode == 0, result.stderr
    lines = [line for line in result.stderr.splitlines() if "backfill progress:" in line]
    assert len(lines) >= 3, result.stderr
    counts = [int(m.group(1)) for m in (re.search(r"(\d+)/300 ids", ln) for ln in lines) if m]
    assert len(counts) == len(lines)
    assert counts == sorted(counts)  # progress only goes forward
    assert counts[0] < n  # a line came while work was still going on
    assert counts[-1] == n  # and the last one says it is all done
    assert "(100%)" in lines[-1]
    assert re.search(r"\d+\.\d ids/s, errors 0", lines[-1])
    assert "\x1b[" not in result.stderr  # no terminal control codes in a log file
