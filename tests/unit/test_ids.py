"""Id files: validation with line numbers, omni CSV, comments, duplicates."""

from __future__ import annotations

from etl import ids


def test_wdk_ids_with_comments_blanks_and_duplicates() -> None:
    parsed = ids.parse(
        ["# header", "500031414182214", "", " 500031414182215 ", "500031414182214"], "wdk", "biz"
    )
    assert parsed.keys == ["500031414182214", "500031414182215"]
    assert parsed.errors == []
    assert parsed.duplicates == 1


def test_bad_lines_are_reported_with_their_number() -> None:
    parsed = ids.parse(
        ["1", "abc", "2", "-3", "99999999999999999999", "1.5"], "wdk", "biz", "f.txt"
    )
    assert parsed.keys == ["1", "2"]
    assert [e.split(":")[1].strip() for e in parsed.errors] == [
        "line 2",
        "line 4",
        "line 5",
        "line 6",
    ]
    assert all(e.startswith("f.txt: line") for e in parsed.errors)
    assert "out of range" in parsed.errors[2]


def test_out_order_ids_are_text() -> None:
    parsed = ids.parse(["ele12324355", "a,b"], "wdk", "out_order")
    assert parsed.keys == ["ele12324355"]
    assert "line 2" in parsed.errors[0]


def test_omni_csv_with_optional_header() -> None:
    lines = [
        "user_id,order_id,out_order_id",
        "3031798632,108717674563804955,54321",
        '"3031798632","108717674563804956","x y"',
        "3031798632,notanumber,1",
        "3031798632,1",
    ]
    parsed = ids.parse(lines, "omni", "omni")
    assert parsed.keys == [
        "3031798632,108717674563804955,54321",
        "3031798632,108717674563804956,x y",
    ]
    assert len(parsed.errors) == 2
    assert "line 4" in parsed.errors[0]
    assert "line 5" in parsed.errors[1]
    assert ids.omni_parts(parsed.keys[0]) == ("3031798632", "108717674563804955", "54321")


def test_bom_is_ignored() -> None:
    assert ids.parse(["\ufeff123"], "wdk", "biz").keys == ["123"]


def test_chunks_stream_a_long_input_in_bounded_pieces() -> None:
    lines = (str(500_000_000_000_000 + i) for i in range(25_000))  # a generator: never a list
    got = list(ids.chunks(lines, "wdk", "biz", "big.txt", size=10_000))
    assert [len(c.keys) for c in got] == [10_000, 10_000, 5_000]
    assert got[-1].lines == 25_000
    assert got[1].keys[0] == str(500_000_000_000_000 + 10_000)
