"""The one exception tree of etl.

Every error raised on purpose by etl derives from :class:`EtlError`. Each class says whether
retrying the same operation can help (``retryable``); callers decide *when* (backoff, ban end).
Foreign exceptions (aiohttp, psycopg, json) are translated at one boundary each, always with
``raise ... from exc`` so the cause stays visible.

::

    EtlError
    ├── ConfigError             a setting is missing or invalid                  (no retry)
    ├── InputError              a malformed id file / argument                   (no retry)
    ├── DatabaseError           the database refused or was unreachable          (retry)
    └── TopError                anything the platform call produced
        ├── TransportError      timeout, reset, HTTP 5xx/429                     (retry)
        ├── MalformedResponse   body not JSON or not the documented shape        (retry)
        ├── PlatformTransient   code 10/44, isp.* remote errors                  (retry)
        ├── RateLimited         flow control ban; carries retry_after seconds    (retry later)
        ├── ClockSkew           code 31: our clock is off by over 10 minutes     (one retry)
        ├── CredentialsRejected the configuration, not the ids, is wrong         (no retry)
        │   ├── AuthError       code 26/27: session invalid or expired  → ETL_TOP_SESSION
        │   ├── SignatureError  code 25: wrong secret or sign method    → ETL_TOP_APP_SECRET
        │   ├── AppKeyError     code 28/29: unknown or disabled app key → ETL_TOP_APP_KEY
        │   └── PermissionDenied code 11/12: the app or seller lacks the API permission
        ├── CallerError         the request itself is wrong (codes 9, 13-47...)  (no retry)
        └── BusinessError       success envelope says the query failed           (no retry)

A :class:`CredentialsRejected` is a property of the configuration: no id is charged for it and
no batch is split over it; ``setting`` names what the operator must fix.
"""

from __future__ import annotations

from typing import ClassVar


class EtlError(Exception):
    """Base class of every error etl raises on purpose."""

    retryable: ClassVar[bool] = False

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or self.__class__.__name__).strip())

    @property
    def error_class(self) -> str:
        """Short name recorded in the queue and the metrics (``transport``, ``auth``, ...)."""
        return self.__class__.__name__


class ConfigError(EtlError):
    """A setting is missing or has an invalid value."""


class InputError(EtlError):
    """Input given to a command is malformed."""


class DatabaseError(EtlError):
    """The database could not be reached or refused the operation."""

    retryable = True


class TopError(EtlError):
    """The platform call failed."""

    def __init__(
        self,
        message: str | None = None,
        *,
        code: int | None = None,
        sub_code: str | None = None,
        sub_msg: str | None = None,
        request_id: str | None = None,
        method: str | None = None,
    ) -> None:
        self.code = code
        self.sub_code = sub_code
        self.sub_msg = sub_msg
        self.request_id = request_id
        self.method = method
        super().__init__(message)

    def __str__(self) -> str:
        parts = [super().__str__()]
        if self.code is not None:
            parts.append(f"code={self.code}")
        if self.sub_code:
            parts.append(f"sub_code={self.sub_code}")
        if self.sub_msg:
            parts.append(f"sub_msg={self.sub_msg}")
        if self.method:
            parts.append(f"method={self.method}")
        if self.request_id:
            parts.append(f"request_id={self.request_id}")
        return " ".join(parts)


class TransportError(TopError):
    """The gateway could not be reached or answered with an HTTP error."""

    retryable = True


class MalformedResponse(TopError):
    """The gateway answered with a body that is not the documented JSON."""

    retryable = True


class PlatformTransient(TopError):
    """The platform reported a transient failure."""

    retryable = True


class RateLimited(TopError):
    """The platform's flow control banned this app key for a while."""

    retryable = True

    def __init__(
        self, message: str | None = None, *, retry_after: float = 0.0, **kw: object
    ) -> None:
        self.retry_after = retry_after
        super().__init__(message, **kw)  # type: ignore[arg-type]

    def __str__(self) -> str:
        return f"{super().__str__()} retry_after={self.retry_after:.0f}s"


class ClockSkew(TopError):
    """The gateway rejected the timestamp: this machine's clock is off by more than 10 minutes."""

    retryable = True


class CredentialsRejected(TopError):
    """The platform rejected this app's credentials or permissions; fix the configuration."""

    setting: ClassVar[str] = "ETL_TOP_APP_KEY / ETL_TOP_APP_SECRET / ETL_TOP_SESSION"

    def hint(self) -> str:
        """One line for the operator: what was rejected and which setting to fix."""
        return f"credentials rejected ({self.__class__.__name__}): check {self.setting} — {self}"


class AuthError(CredentialsRejected):
    """The session key is invalid or expired: renew it (ETL_TOP_SESSION)."""

    setting = "ETL_TOP_SESSION"


class SignatureError(CredentialsRejected):
    """The gateway rejected the signature: check ETL_TOP_APP_SECRET and ETL_TOP_SIGN_METHOD."""

    setting = "ETL_TOP_APP_SECRET (and ETL_TOP_SIGN_METHOD)"


class AppKeyError(CredentialsRejected):
    """The gateway does not know this app key (or it is disabled): check ETL_TOP_APP_KEY."""

    setting = "ETL_TOP_APP_KEY"


class PermissionDenied(CredentialsRejected):
    """The app or the seller lacks permission for this API: authorise it on the platform."""

    setting = "the app's API permissions on the platform console (and ETL_TOP_SESSION's seller)"


class CallerError(TopError):
    """The platform rejected the request as invalid; retrying will not help."""


class BusinessError(TopError):
    """The platform answered, but its result says the query failed."""
