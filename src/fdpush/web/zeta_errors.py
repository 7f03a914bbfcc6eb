"""ZETA's error shape ``{"errorCode", "errorDetail"}``, for every answer under the RS API's path.

The RS API's handlers raise :class:`~fdpush.domain.zeta.RsError`. Everything else that can end
a request there — a body over the limit or a ``%`` in a literal path segment (refused before
routing), a request head over the limit (:mod:`fdpush.web.protocol`), an unknown route or
method, another error of ours, an unexpected failure — is translated here by its status, so the
Fachdienst's backend never sees the Matrix shape of the client API.
"""

from __future__ import annotations

import math

from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from fdpush.domain.errors import FdPushError, LimitExceeded
from fdpush.domain.zeta import RsError
from fdpush.web.responses import JsonResponse

__all__ = ["RS_BASE_PATH", "is_rs_path", "rs_error_response", "to_rs_error"]

RS_BASE_PATH = "/notification-service/v1"

# The spec's codes where it has one; for the statuses it does not list, the status's name.
_CODES = {
    400: "INVALID_PARAM",
    401: "UNAUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    429: "RATE_LIMITED",
    431: "REQUEST_HEADER_FIELDS_TOO_LARGE",
    503: "SERVICE_UNAVAILABLE",
}
_DETAILS = {404: "Unrecognized request", 405: "Method not allowed for this endpoint"}


def is_rs_path(path: str) -> bool:
    """Whether ``path`` (as routed, without the query) belongs to the RS API."""
    return path == RS_BASE_PATH or path.startswith(RS_BASE_PATH + "/")


def error_code(status: int) -> str:
    """The ``errorCode`` an error of ``status`` answers with when nothing more specific is known."""
    return _CODES.get(status, "INTERNAL_ERROR" if status >= 500 else "INVALID_PARAM")


def to_rs_error(exc: Exception) -> RsError:
    """Any error in ZETA's words; an exception we do not know is 500 ``INTERNAL_ERROR``."""
    if isinstance(exc, RsError):
        return exc
    if isinstance(exc, LimitExceeded):
        seconds = max(1, math.ceil(exc.retry_after_ms / 1000))
        return RsError(429, "RATE_LIMITED", "Too many requests", retry_after=seconds)
    if isinstance(exc, FdPushError) and exc.status < 500:
        return RsError(exc.status, error_code(exc.status), exc.message)
    if isinstance(exc, RequestValidationError):
        return RsError(400, "INVALID_PARAM", "The request does not have the expected form")
    if isinstance(exc, StarletteHTTPException) and exc.status_code < 500:
        detail = _DETAILS.get(exc.status_code, str(exc.detail))
        return RsError(exc.status_code, error_code(exc.status_code), detail)
    return RsError(500, "INTERNAL_ERROR", "Internal server error")


def rs_error_response(error: RsError) -> JsonResponse:
    headers = {} if error.retry_after is None else {"Retry-After": str(error.retry_after)}
    if error.status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    return JsonResponse(
        {"errorCode": error.code, "errorDetail": error.detail},
        status_code=error.status,
        headers=headers,
    )
