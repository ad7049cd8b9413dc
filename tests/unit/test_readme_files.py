"""The README points only at files that exist in the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
# Files the README tells the user to create; they are not in the repository on purpose.
USER_FILES = {"config/etl.toml"}
_EXT = re.compile(r"\.(md|py|toml|ya?ml|ini|txt|json|cfg|sh|mako)$")


def referenced_files(text: str) -> set[str]:
    """Backticked repository paths (``bench/load.py``, ``docker-compose.yml``, ``etl/cli/``) and
    relative Markdown links."""
    out = set()
    for token in re.findall(r"`([A-Za-z0-9_.*/-]+)`", text):
        first = token.split("/")[0]
        if token.startswith("/") or first.isupper():  # a URL path or a placeholder (DATA_DIR/pg)
            continue
        if "/" in token or _EXT.search(token) or token in {"Dockerfile", "Makefile"}:
            out.add(token)
    for link in re.findall(r"\]\(([^)#\s]+)[^)]*\)", text):
        if "://" not in link:
            out.add(link)
    return out


def test_readme_points_only_at_files_that_exist() -> None:
    refs = referenced_files(README.read_text(encoding="utf-8"))
    assert {"docker-compose.yml", "Dockerfile", "bench/load.py", ".ci/run"} <= refs
    missing = sorted(r for r in refs - USER_FILES if not list(ROOT.glob(r.rstrip("/"))))
    assert missing == [], f"README.md names files that are not in the repository: {missing}"


def test_the_check_would_catch_a_missing_file() -> None:
    assert "PERF_NOTES.md" in referenced_files("see `PERF_NOTES.md` and [x](docs/NOPE.md)")
    assert "docs/NOPE.md" in referenced_files("[x](docs/NOPE.md)")
