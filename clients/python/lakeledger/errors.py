"""Typed errors carrying the server's error body: code, message and error id."""

from __future__ import annotations

import json
import re
from typing import Optional


class LakeledgerError(Exception):
    """A refusal or failure reported by the server (or the transport to it).

    ``status`` is the HTTP status (for Flight calls, the HTTP status of the same refusal),
    ``code`` the stable machine-readable code (``feature_group_not_found``...), ``message``
    what went wrong and ``error_id`` the id to quote to an operator.
    """

    def __init__(self, status: int, code: str, message: str, error_id: Optional[str] = None):
        self.status = status
        self.code = code
        self.message = message
        self.error_id = error_id
        super().__init__(f"{status} {code}: {message}" + (f" (error_id {error_id})" if error_id else ""))


class BadRequest(LakeledgerError):
    """400, 406, 413, 415: the request itself is malformed, too large or of the wrong type."""


class Unauthenticated(LakeledgerError):
    """401: no credentials, or an unknown, revoked or expired key or token."""


class PermissionDenied(LakeledgerError):
    """403: the role may not do this, the name is reserved, or SQL was refused."""


class NotFound(LakeledgerError):
    """404: no such feature group, version, training set, model... in the caller's tenant."""


class Conflict(LakeledgerError):
    """409: already exists, concurrent change, or an integrity check failed."""


class Unprocessable(LakeledgerError):
    """422: well-formed but not acceptable (rows that do not match the schema...)."""


class TooManyRequests(LakeledgerError):
    """429: over a quota or the tenant's concurrency limit; ``retry_after`` seconds."""

    retry_after: Optional[float] = None


class Unavailable(LakeledgerError):
    """503, 504: overloaded, the ledger cannot record, or a deadline passed; retry."""


class ServerError(LakeledgerError):
    """Any other 5xx: quote ``error_id`` to an operator."""


_BY_STATUS = {
    400: BadRequest,
    406: BadRequest,
    413: BadRequest,
    415: BadRequest,
    401: Unauthenticated,
    403: PermissionDenied,
    404: NotFound,
    409: Conflict,
    422: Unprocessable,
    429: TooManyRequests,
    503: Unavailable,
    504: Unavailable,
}


def error_for(status: int, code: str, message: str, error_id: Optional[str] = None) -> LakeledgerError:
    cls = _BY_STATUS.get(status) or (ServerError if status >= 500 else LakeledgerError)
    return cls(status, code, message, error_id)


def from_http(status: int, body: bytes, retry_after: Optional[str] = None) -> LakeledgerError:
    """The error an HTTP error response describes (its one error body)."""
    try:
        e = json.loads(body)["error"]
        err = error_for(status, e["code"], e["message"], e.get("error_id"))
    except (ValueError, KeyError, TypeError):
        err = error_for(status, "http_error", body.decode("utf-8", "replace")[:500] or f"HTTP {status}")
    if isinstance(err, TooManyRequests) and retry_after:
        try:
            err.retry_after = float(retry_after)
        except ValueError:
            pass
    return err


# Flight statuses carry `<code>: <message> (error_id <id>)`; the gRPC status gives the class.
_FLIGHT_MESSAGE = re.compile(r"(?P<code>[a-z_]+): (?P<message>.*?)(?: \(error_id (?P<id>[0-9a-f-]+)\))?(?:\. gRPC client debug context:.*)?$", re.S)
_GRPC_TO_HTTP = {
    "FlightUnauthenticatedError": 401,
    "FlightUnauthorizedError": 403,
    "FlightUnavailableError": 503,
    "FlightTimedOutError": 504,
    "FlightInternalError": 500,
    "FlightServerError": 500,
    "FlightCancelledError": 499,
    # pyarrow raises its own classes for some gRPC codes.
    "ArrowKeyError": 404,
    "ArrowInvalid": 400,
    "ArrowNotImplementedError": 501,
}
# Codes pyarrow folds into a generic class: the status the server gave the code over HTTP.
_CODE_TO_HTTP = {
    "bad_request": 400,
    "invalid_sql": 400,
    "malformed_body": 400,
    "sql_not_allowed": 403,
    "table_not_visible": 403,
    "forbidden": 403,
    "version_not_found": 404,
    "unsupported_sql": 422,
    "limit_exceeded": 422,
    "invalid_rows": 422,
    "quota_exceeded": 429,
    "too_many_requests": 429,
    "not_implemented": 501,
}


def from_flight(e: Exception) -> LakeledgerError:
    """The typed error for an error ``pyarrow.flight`` raised on a call to this server (a
    ``FlightError``, or for some gRPC codes an ``ArrowKeyError``, ``ArrowInvalid``...)."""
    text = str(e)
    # pyarrow prefixes the gRPC detail with "Flight returned ... error, with message: ".
    text = text.split("with message: ", 1)[-1]
    m = _FLIGHT_MESSAGE.match(text.strip())
    code, message, error_id = (m.group("code"), m.group("message"), m.group("id")) if m else ("flight_error", text, None)
    status = _GRPC_TO_HTTP.get(type(e).__name__, 0)
    if code.endswith("_not_found"):
        status = 404
    elif code in _CODE_TO_HTTP and status in (0, 500):
        status = _CODE_TO_HTTP[code]
    elif status == 0:
        status = 400
    return error_for(status, code, message, error_id)
