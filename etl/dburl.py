"""PostgreSQL URLs: split them the way a person writes them, validate, re-encode, redact.

A password often holds characters that a URL reserves (``@ : / %``). People write them as they
are (``postgresql://etl:p@ss/w:rd@db/etl``); libpq and SQLAlchemy then cut at the first ``@``
and the rest of the password turns up as a host name in an error message. So the user info ends
at the *last* ``@`` before the query, and the URL handed to the drivers is rebuilt with the user
and password percent-encoded. Error messages here never quote any part of the URL: a mis-split
URL may have put a piece of the password anywhere.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from urllib.parse import quote, unquote

SCHEMES = ("postgresql", "postgres", "postgresql+psycopg")
EXAMPLE = "postgresql://USER:PASSWORD@HOST:5432/DBNAME"
MASK = "***"

_SCHEME = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://(.*)$", re.DOTALL)
# Characters a percent-encoded user or password never holds as they are: if one is there, the
# value was written raw and is taken literally.
_RAW = re.compile(r"[@:/?#\s]|%(?![0-9A-Fa-f]{2})")
_URL_IN_TEXT = re.compile(r"\b[A-Za-z][A-Za-z0-9+.-]*://\S+")
_QUERY_PASSWORD = re.compile(r"(^|&)(password=)[^&]*", re.IGNORECASE)


@dataclass(frozen=True)
class DbUrl:
    scheme: str
    user: str | None  # decoded
    password: str | None  # decoded
    hosts: str  # host[:port][,host[:port]...], as written
    path: str | None  # the database name as written (None: no "/" at all)
    query: str | None  # as written, without "?"

    def unparse(self, password: str | None = None) -> str:
        """The URL with the user and ``password`` (default: the real one) percent-encoded."""
        out = self.scheme + "://"
        if self.user is not None or self.password is not None:
            out += quote(self.user or "", safe="")
            shown = self.password if password is None else password
            if shown is not None:
                out += ":" + (shown if password is not None else quote(shown, safe=""))
            out += "@"
        out += self.hosts
        if self.path is not None:
            out += "/" + self.path
        if self.query is not None:
            out += "?" + self.query
        return out


def _decode(value: str) -> str:
    return value if _RAW.search(value) else unquote(value)


def split(url: str) -> DbUrl | None:
    """The parts of ``url`` (no validation); None when it is not ``scheme://...`` at all."""
    m = _SCHEME.match(url.strip())
    if not m:
        return None
    scheme, rest = m.group(1), m.group(2)
    before_query = rest.split("?", 1)[0]
    at = before_query.rfind("@")
    user = password = None
    if at >= 0:
        userinfo, rest = rest[:at], rest[at + 1 :]
        name, colon, secret = userinfo.partition(":")
        user = _decode(name)
        password = _decode(secret) if colon else None
    rest, q, query = rest.partition("?")
    hosts, slash, path = rest.partition("/")
    return DbUrl(scheme, user, password, hosts, path if slash else None, query if q else None)


def _check_host(host: str) -> None:
    if host.startswith("["):
        end = host.find("]")
        if end < 0:
            raise ValueError(f"an IPv6 address is missing its closing ']' (expected {EXAMPLE})")
        rest = host[end + 1 :]
        if rest and not rest.startswith(":"):
            raise ValueError(f"unexpected text after an IPv6 address (expected {EXAMPLE})")
        port = rest[1:] if rest else ""
    else:
        if "[" in host or "]" in host:
            raise ValueError(f"a host has a stray '[' or ']' (expected {EXAMPLE})")
        _, _, port = host.partition(":")
    if ":" in host and not host.startswith("[") and not port:
        raise ValueError(f"a host ends in ':' with no port (expected {EXAMPLE})")
    if port and not (port.isdigit() and 1 <= int(port) <= 65535):
        raise ValueError(f"the port is not a number from 1 to 65535 (expected {EXAMPLE})")


def parse(url: str) -> DbUrl:
    """The parts of ``url``, validated; ValueError (quoting nothing of the URL) if malformed."""
    parts = split(url)
    if parts is None:
        raise ValueError(f"not a URL (expected {EXAMPLE})")
    if parts.scheme.lower() not in SCHEMES:
        raise ValueError(f"the scheme must be postgresql:// (expected {EXAMPLE})")
    for host in parts.hosts.split(","):
        _check_host(host)
    return parts


def normalize(url: str) -> str:
    """``url`` validated and rebuilt with its user and password percent-encoded, so that libpq
    and SQLAlchemy read the same user, password and host as the person who wrote it."""
    return parse(url).unparse()


def redact(url: str) -> str:
    """``postgresql://u:p@ss@h/db`` → ``postgresql://u:***@h/db`` (also ``?password=``)."""
    parts = split(url)
    if parts is None:
        return re.sub(r"(password\s*=\s*)\S+", r"\1" + MASK, url, flags=re.IGNORECASE)
    query = parts.query
    if query is not None:
        query = _QUERY_PASSWORD.sub(r"\1\2" + MASK, query)
    masked = DbUrl(parts.scheme, parts.user, None, parts.hosts, parts.path, query)
    return masked.unparse(MASK if parts.password is not None else None)


def password(url: str) -> str | None:
    """The password of ``url`` (decoded; from the user info, else a ``?password=``), or None."""
    parts = split(url)
    if parts is None:
        return None
    if parts.password is None and parts.query:
        for pair in parts.query.split("&"):
            key, _, value = pair.partition("=")
            if key.lower() == "password":
                return unquote(value)
    return parts.password


def scrub(text: str) -> str:
    """``text`` with the password of every URL in it masked (for driver messages)."""
    return _URL_IN_TEXT.sub(lambda m: redact(m.group(0)), text)
