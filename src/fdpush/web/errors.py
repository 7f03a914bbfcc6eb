"""Matrix-style error bodies ``{"errcode", "error"}`` for every failure, and their handlers.

No input may produce a 5xx; an unexpected failure answers ``M_UNKNOWN`` without details and is
logged for the operator (without the request body). Under the RS API's path every answer has
ZETA's shape instead (:mod:`fdpush.web.zeta_errors`): :func:`refusal` picks the shape by path
for what is refused before routing.
"""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import Scope

from fdpush.domain.errors import FdPushError, LimitExceeded
from fdpush.logs import request_id
from fdpush.web.request_id import HEADER as REQUEST_ID_HEADER
from fdpush.web.responses import JsonResponse
from fdpush.web.zeta_errors import is_rs_path, rs_error_response, to_rs_error

__all__ = [
    "BadJson",
    "MissingToken",
    "NotJson",
    "TooLarge",
    "UnknownToken",
    "Unrecognized",
    "error_response",
    "install_error_handlers",
    "refusal",
]

log = logging.getLogger(__name__)


class NotJson(FdPushError):
    errcode = "M_NOT_JSON"
    status = 400


class BadJson(FdPushError):
    errcode = "M_BAD_JSON"
    status = 400


class MissingToken(FdPushError):
    errcode = "M_MISSING_TOKEN"
    status = 401


class UnknownToken(FdPushError):
    errcode = "M_UNKNOWN_TOKEN"
    status = 401


class Unrecognized(FdPushError):
    errcode = "M_UNRECOGNIZED"
    status = 404


class TooLarge(FdPushError):
    errcode = "M_TOO_LARGE"
    status = 413


def error_response(error: FdPushError) -> JsonResponse:
    body: dict[str, object] = {"errcode": error.errcode, "error": error.message}
    headers: dict[str, str] = {}
    if isinstance(error, LimitExceeded):
        body["retry_after_ms"] = error.retry_after_ms
        headers["Retry-After"] = str(max(1, math.ceil(error.retry_after_ms / 1000)))
    if isinstance(error, (MissingToken, UnknownToken)):
        headers["WWW-Authenticate"] = "Bearer"
    return JsonResponse(body, status_code=error.status, headers=headers)


def refusal(scope: Scope, error: FdPushError) -> JsonResponse:
    """The answer to a request refused before routing, in the shape of the API of its path."""
    if is_rs_path(scope.get("path", "")):
        return rs_error_response(to_rs_error(error))
    return error_response(error)


def _plain(status: int, errcode: str, message: str) -> JsonResponse:
    return JsonResponse({"errcode": errcode, "error": message}, status_code=status)


async def _on_domain_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, FdPushError)
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, StarletteHTTPException)
    if is_rs_path(request.url.path):  # the RS API's base path itself, not mounted below it
        return rs_error_response(to_rs_error(exc))
    if exc.status_code == 404:
        return _plain(404, "M_UNRECOGNIZED", "Unrecognized request")
    if exc.status_code == 405:
        return _plain(405, "M_UNRECOGNIZED", "Method not allowed for this endpoint")
    errcode = "M_UNKNOWN" if exc.status_code >= 500 else "M_INVALID_PARAM"
    return _plain(exc.status_code, errcode, str(exc.detail))


async def _on_validation_error(_request: Request, exc: Exception) -> JsonResponse:
    assert isinstance(exc, RequestValidationError)
    first = exc.errors()[0] if exc.errors() else {}
    where = ".".join(str(p) for p in first.get("loc", ()) if p not in ("path", "query", "body"))
    return _plain(400, "M_INVALID_PARAM", f"{where}: {first.get('msg', 'invalid')}")


async def _on_unexpected(request: Request, exc: Exception) -> JsonResponse:
    log.error(
        "unhandled error on %s %s: %s",
        request.method,
        request.scope.get("route").path_format if request.scope.get("route") else "?",  # type: ignore[union-attr]
        type(exc).__name__,
        exc_info=exc,
    )
    # Starlette sends this answer from its outermost middleware, past RequestIdMiddleware:
    # the id it set for this request is echoed here.
    current = request_id.get()
    headers = {} if current is None else {REQUEST_ID_HEADER: current}
    body = {"errcode": "M_UNKNOWN", "error": "Internal server error"}
    return JsonResponse(body, status_code=500, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(FdPushError, _on_domain_error)
    app.add_exception_handler(StarletteHTTPException, _on_http_error)
    app.add_exception_handler(RequestValidationError, _on_validation_error)
    app.add_exception_handler(Exception, _on_unexpected)
