"""The ``etl`` command: parse, call, map errors to exit codes. No logic lives here.

One module per command group; importing them registers their commands on :data:`main`.
Every setting (except secrets, which come only from the environment or the config file) has a
global flag, e.g. ``etl --top-qps 5 sync``; ``--help`` shows each flag's environment variable.
"""

from etl.cli import admin, load, prune, queue, report, status, tmc
from etl.cli.base import main

__all__ = ["admin", "load", "main", "prune", "queue", "report", "status", "tmc"]
