"""Array parameters as PostgreSQL array literals (``{"a","b",NULL}``), for statements that cast
them (``CAST(:keys AS text[])``, ``%s::bigint[]``).

psycopg adapts a Python list element by element in Python (~1.2 us an element, measured on a
list of 50 ids); the queue's statements pass up to nine arrays of every id of a batch, so the
sync loop spent more time adapting them than the server spent inserting the rows. The literal
is built in one pass (~0.2 us an element) and parsed by the server's own ``array_in``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import cast


def text_array(values: Iterable[str | None]) -> str:
    """A ``text[]`` literal: every element quoted (a backslash or a double quote escaped),
    None as NULL — exact for any string."""
    items = list(values)
    if not items:
        return "{}"
    if None not in items:
        plain = cast(list[str], items)  # no None: checked just above
        whole = "".join(plain)
        if '"' not in whole and "\\" not in whole:  # the usual case: nothing to escape
            return '{"' + '","'.join(plain) + '"}'
    return (
        "{"
        + ",".join(
            "NULL" if v is None else '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
            for v in items
        )
        + "}"
    )


def number_array(values: Iterable[int | float | None]) -> str:
    """An ``int[]`` / ``bigint[]`` / ``float8[]`` literal, None as NULL."""
    items = list(values)
    if None not in items:
        return "{" + ",".join(map(str, items)) + "}"
    return "{" + ",".join("NULL" if v is None else str(v) for v in items) + "}"
