"""TOP request signing (pure): parameters + secret → ``sign``.

1. take every parameter that will be sent except ``sign``; drop empty values;
2. sort the names in ascending byte order; concatenate ``name + value`` → S;
3. md5: MD5(secret + S + secret); hmac: HMAC-MD5(secret, S); hmac-sha256: HMAC-SHA256(secret, S);
4. upper-case hex.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping

SIGN_METHODS = ("md5", "hmac", "hmac-sha256")


def is_empty(value: str | None) -> bool:
    """Empty values are neither signed nor sent."""
    return value is None or value.strip() == ""


def canonical_string(params: Mapping[str, str | None]) -> str:
    """The string that is signed: sorted ``name + value`` pairs, ``sign`` and empties left out."""
    names = sorted(
        (k for k, v in params.items() if k != "sign" and not is_empty(v)),
        key=lambda k: k.encode("utf-8"),
    )
    return "".join(f"{k}{params[k]}" for k in names)


def sign(params: Mapping[str, str | None], secret: str, method: str) -> str:
    """The ``sign`` parameter for ``params`` under ``secret`` with sign ``method``."""
    message = canonical_string(params).encode("utf-8")
    key = secret.encode("utf-8")
    if method == "md5":
        digest = hashlib.md5(key + message + key, usedforsecurity=False).hexdigest()
    elif method == "hmac":
        digest = hmac.new(key, message, hashlib.md5).hexdigest()
    elif method == "hmac-sha256":
        digest = hmac.new(key, message, hashlib.sha256).hexdigest()
    else:
        raise ValueError(f"unknown sign_method {method!r}; expected one of {SIGN_METHODS}")
    return digest.upper()


def verify(params: Mapping[str, str | None], secret: str) -> bool:
    """True when ``params['sign']`` is right for the other parameters (constant time)."""
    given = params.get("sign") or ""
    method = params.get("sign_method") or "md5"
    if method not in SIGN_METHODS:
        return False
    return hmac.compare_digest(given.upper(), sign(params, secret, method))
