"""Signing: the vectors of TOP_PROTOCOL.md, RFC 2202 / 4231 HMAC cases, and properties."""

from __future__ import annotations

import hashlib
import hmac
import random

import pytest
from hypothesis import given
from hypothesis import strategies as st

from etl.top import signing

PUBLISHED = {
    "method": "taobao.item.seller.get",
    "app_key": "12345678",
    "session": "test",
    "timestamp": "2016-01-01 12:00:00",
    "format": "json",
    "v": "2.0",
    "sign_method": "md5",
    "fields": "num_iid,title,nick,price,num",
    "num_iid": "11223344",
}
WORKED = {
    "method": "taobao.user.seller.get",
    "timestamp": "2013-05-06 13:52:03",
    "format": "xml",
    "app_key": "test",
    "v": "2.0",
    "fields": "nick",
    "sign_method": "md5",
    "session": "test",
}
WDK = {
    "method": "alibaba.wdk.order.get",
    "app_key": "12345678",
    "session": "test-session",
    "timestamp": "2024-01-02 03:04:05",
    "format": "json",
    "v": "2.0",
    "sign_method": "md5",
    "simplify": "true",
    "id_list_query_req": '{"biz_id_list":[13233],"tb_biz_id_list":[12123],"order_from":3,'
    '"shop_id":"12343561","store_id":"CSDRF01001"}',
}


@pytest.mark.parametrize(
    ("params", "secret", "expected"),
    [
        (PUBLISHED, "helloworld", "66987CB115214E59E6EC978214934FB8"),
        (WORKED, "test", "72CB4D809B375A54502C09360D879C64"),
        (
            {"foo": "1", "bar": "2", "foo_bar": "3", "foobar": "4"},
            "helloworld",
            "5AAF1C690262A24768F5478B084C2C8A",
        ),
        (WDK, "helloworld", "83B93478EC8D5CB9454126851F74C5A5"),
    ],
)
def test_protocol_vectors(params: dict[str, str], secret: str, expected: str) -> None:
    assert signing.sign(params, secret, "md5") == expected


def test_sorting_with_underscore_canonical_string() -> None:
    params = {"foo": "1", "bar": "2", "foo_bar": "3", "foobar": "4"}
    assert signing.canonical_string(params) == "bar2foo1foo_bar3foobar4"


# RFC 2202 (HMAC-MD5) and RFC 4231 (HMAC-SHA256) cases: key, data, digest. The canonical string
# of {"": data}... is not expressible, so we sign a one-parameter dict whose name+value is data.
RFC_MD5 = [
    (b"\x0b" * 16, b"Hi There", "9294727a3638bb1c13f48ef8158bfc9d"),
    (b"Jefe", b"what do ya want for nothing?", "750c783e6ab0b503eaa86e310a5db738"),
    (
        b"\xaa" * 80,
        b"Test Using Larger Than Block-Size Key - Hash Key First",
        "6b1ab7fe4bd7bf8f0b62e6ce61b9d0cd",
    ),
]
RFC_SHA256 = [
    (b"\x0b" * 20, b"Hi There", "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7"),
    (
        b"Jefe",
        b"what do ya want for nothing?",
        "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843",
    ),
]


def _as_params(data: bytes) -> dict[str, str]:
    text = data.decode()
    return {text[0]: text[1:]}


@pytest.mark.parametrize(("key", "data", "digest"), RFC_MD5)
def test_hmac_md5_rfc2202(key: bytes, data: bytes, digest: str) -> None:
    assert hmac.new(key, data, hashlib.md5).hexdigest() == digest
    if key.isascii() and key.decode().isprintable():
        assert signing.sign(_as_params(data), key.decode(), "hmac") == digest.upper()


@pytest.mark.parametrize(("key", "data", "digest"), RFC_SHA256)
def test_hmac_sha256_rfc4231(key: bytes, data: bytes, digest: str) -> None:
    assert hmac.new(key, data, hashlib.sha256).hexdigest() == digest
    if key.isascii() and key.decode().isprintable():
        assert signing.sign(_as_params(data), key.decode(), "hmac-sha256") == digest.upper()


def test_hmac_variants_are_real_hmacs_of_the_canonical_string() -> None:
    s = signing.canonical_string(WDK)
    assert (
        signing.sign(WDK, "k3y", "hmac") == hmac.new(b"k3y", s.encode(), "md5").hexdigest().upper()
    )
    assert signing.sign(WDK, "k3y", "hmac-sha256") == (
        hmac.new(b"k3y", s.encode(), "sha256").hexdigest().upper()
    )
    assert len(signing.sign(WDK, "k3y", "hmac-sha256")) == 64
    assert len(signing.sign(WDK, "k3y", "hmac")) == 32


def test_unknown_method_rejected() -> None:
    with pytest.raises(ValueError, match="sha1"):
        signing.sign(WDK, "x", "sha1")


names = st.text(
    alphabet=st.characters(min_codepoint=33, max_codepoint=0x2FFF), min_size=1, max_size=8
)
values = st.text(max_size=12)


@given(st.dictionaries(names, values, max_size=10), st.randoms())
def test_parameter_order_never_matters(params: dict[str, str], rnd: random.Random) -> None:
    items = list(params.items())
    rnd.shuffle(items)
    assert signing.canonical_string(dict(items)) == signing.canonical_string(params)


@given(st.dictionaries(names, values, max_size=10), names)
def test_empty_values_are_dropped(params: dict[str, str], extra: str) -> None:
    base = {k: v for k, v in params.items() if v.strip()}
    for empty in ("", "   ", None):
        with_empty: dict[str, str | None] = dict(base)
        if extra not in with_empty:
            with_empty[extra] = empty
        assert signing.canonical_string(with_empty) == signing.canonical_string(base)


@given(st.dictionaries(names, values, max_size=10))
def test_sign_itself_is_never_signed(params: dict[str, str]) -> None:
    assert signing.canonical_string({**params, "sign": "ABC"}) == signing.canonical_string(
        {k: v for k, v in params.items() if k != "sign"}
    )


def test_verify_round_trip() -> None:
    for method in signing.SIGN_METHODS:
        params = dict(WDK, sign_method=method)
        params["sign"] = signing.sign(params, "s", method)
        assert signing.verify(params, "s")
        assert not signing.verify(params, "wrong")
