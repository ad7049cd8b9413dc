"""Each lenient field parser on its own."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl import chinatime
from etl.normalize import fields as f


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3440, 3440),
        ("3440", 3440),
        (" 12 ", 12),
        ("-5", -5),
        (3440.0, 3440),
        ("1e3", 1000),
        ("3725362658812595205", 3725362658812595205),
        (3725362658812595205, 3725362658812595205),
        ("", None),
        (None, None),
        ("  ", None),
    ],
)
def test_to_int(value: object, expected: int | None) -> None:
    assert f.to_int(value) == expected


@pytest.mark.parametrize("value", ["12.5", 12.5, "abc", True, [1], {"a": 1}, "9223372036854775808"])
def test_to_int_rejects(value: object) -> None:
    with pytest.raises(f.BadField):
        f.to_int(value)


def test_small_int_bounds() -> None:
    assert f.to_int16("32767") == 32767
    with pytest.raises(f.BadField):
        f.to_int16(32768)
    with pytest.raises(f.BadField):
        f.to_int32(2**31)


@given(st.integers(min_value=-(2**63), max_value=2**63 - 1))
def test_to_int_is_exact_for_every_int64(n: int) -> None:
    assert f.to_int(n) == n
    assert f.to_int(str(n)) == n


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1.1", Decimal("1.1")),
        ("2.200", Decimal("2.200")),
        (5, Decimal(5)),
        (1.5, Decimal("1.5")),
        ("", None),
        (None, None),
    ],
)
def test_to_decimal(value: object, expected: Decimal | None) -> None:
    assert f.to_decimal(value) == expected


@pytest.mark.parametrize("value", ["1,5", "abc", "NaN", "Infinity", True])
def test_to_decimal_rejects(value: object) -> None:
    with pytest.raises(f.BadField):
        f.to_decimal(value)


def test_to_time_reads_china_time() -> None:
    t = f.to_time("2024-01-02 00:30:00")
    assert t is not None
    assert t.utcoffset() is not None
    assert t.astimezone(UTC) == datetime(2024, 1, 1, 16, 30, tzinfo=UTC)
    assert f.to_time("2024-01-02") == datetime(2024, 1, 2, tzinfo=chinatime.CHINA)
    assert f.to_time("2024-01-02T03:04:05") == datetime(2024, 1, 2, 3, 4, 5, tzinfo=chinatime.CHINA)
    assert f.to_time(1704126600000) == datetime(2024, 1, 1, 16, 30, tzinfo=UTC)
    assert f.to_time("") is None


@pytest.mark.parametrize("value", ["2024-13-01 00:00:00", "yesterday", "2024/01/02 10:00:00", [1]])
def test_to_time_rejects(value: object) -> None:
    with pytest.raises(f.BadField):
        f.to_time(value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        ("true", True),
        ("TRUE", True),
        ("1", True),
        (1, True),
        (False, False),
        ("false", False),
        ("0", False),
        ("", None),
        (None, None),
    ],
)
def test_to_bool(value: object, expected: bool | None) -> None:
    assert f.to_bool(value) is expected


def test_to_bool_rejects() -> None:
    with pytest.raises(f.BadField):
        f.to_bool("maybe")


def test_to_text_accepts_any_scalar_and_drops_nul() -> None:
    assert f.to_text(123) == "123"
    assert f.to_text(True) == "true"
    assert f.to_text("a\x00b") == "ab"
    assert f.to_text({"a": 1}) == '{"a":1}'
    assert f.to_text(None) is None
    assert f.to_text("") == ""


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ('{"point":"2"}', {"point": "2"}),
        ("[]", []),
        ('“{\\"btn\\":\\"C001\\"}', {"btn": "C001"}),  # the API page's own pay_attributes
        ('{"PACKAGED":"2020-01-01 15:23:29",}', {"PACKAGED": "2020-01-01 15:23:29"}),
        ('[{"a":1},]', [{"a": 1}]),
        ('"{\\"a\\":1}"', {"a": 1}),  # JSON encoded twice
        ("”{“a”:1}", None),  # hopeless
        ("1", 1),
    ],
)
def test_loose_json(text: str, expected: object) -> None:
    loose = f.loose_json(text)
    assert loose.value == expected
    assert loose.raw == text
    assert loose.ok is (expected is not None)
    if expected is not None:
        assert loose.text is not None
        assert f.loose_json(loose.text).value == expected


def test_loose_json_empty_and_null() -> None:
    assert f.loose_json("") == f.Loose(None, "", True, None)
    assert f.loose_json(None) == f.Loose(None, None, True, None)
    assert f.loose_json("null").ok
    assert f.loose_json({"a": 1}).value == {"a": 1}


def test_loose_json_text_never_has_what_jsonb_refuses() -> None:
    loose = f.loose_json('{"a":"x\\u0000y","b":"raw\x01ctl"}')
    assert loose.ok
    assert loose.text is not None
    assert "\\u0000" not in loose.text
    assert "\x01" not in loose.text  # re-encoded as an escape


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
        lambda c: st.lists(c) | st.dictionaries(st.text(), c),
        max_leaves=10,
    )
)
def test_loose_json_round_trips_valid_json(value: object) -> None:
    text = f.dumps(value)
    loose = f.loose_json(text)
    assert loose.ok
