"""The README's data dictionary is the one generated from the schema."""

from __future__ import annotations

from pathlib import Path

from etl import docs
from etl.db.tables import metadata

README = Path(__file__).resolve().parents[2] / "README.md"


def test_readme_dictionary_is_current() -> None:
    text = README.read_text(encoding="utf-8")
    start = text.index("<!-- data-dictionary:start -->\n") + len("<!-- data-dictionary:start -->\n")
    end = text.index("<!-- data-dictionary:end -->")
    assert text[start:end].strip() == docs.dictionary().strip(), "run: python -m etl.docs"


def test_every_column_is_commented_and_documented() -> None:
    dictionary = docs.dictionary()
    for table in docs.DOCUMENTED:
        assert table.comment
        for column in table.columns:
            assert column.comment, f"{table.name}.{column.name} has no comment"
            assert f"| `{column.name}` |" in dictionary
    assert {t.name for t in docs.DOCUMENTED} == set(metadata.tables)


def test_readme_names_every_setting_and_command() -> None:
    from etl.cli import main
    from etl.settings import FIELD_NAMES

    text = README.read_text(encoding="utf-8")
    for field in FIELD_NAMES:
        assert f"`{field.upper()}`" in text, f"setting {field} is not in the README"
    for command in main.commands:
        assert f"etl {command}" in text, command
