"""The Push Gateway API's request checks and answer shapes, shared by both gateway modes.

One place for what the spec prescribes before a gateway does anything with a request: the size
cap (413 with ``details.max_request_size_kb``), the schema (400 ``Invalid data format``), then
the batch rules in the spec's priority order (``Batch size exceeds maximum limit`` →
``Duplicate notification IDs in batch`` → ``Individual notification too large``), and the shape
of the batch answer (``results`` in request order and ``summary``). The development gateway
(:mod:`fdpush.gateway.app`) and the production gateway (:mod:`fdpush.gateway.production.app`)
both answer through these functions, so they cannot drift apart.
"""

from __future__ import annotations

from collections import Counter
from typing import Any, TypeVar

import orjson
from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response

from fdpush.gateway.trouble import Limits
from fdpush.gateway_api import (
    BATCH_TOO_BIG,
    DUPLICATE_IDS,
    INVALID_DATA,
    ITEM_TOO_LARGE,
    BatchNotificationResponse,
    BatchSummary,
    ErrorResponse,
    NotificationResult,
    encode,
    validate_request,
)

__all__ = [
    "BATCH_TOO_LARGE",
    "NOTIFY_TOO_LARGE",
    "PUSH_BASE",
    "SEED_NOTIFY_PATH",
    "TooLarge",
    "batch_answer",
    "batch_checks",
    "encoded_response",
    "error_response",
    "invalid",
    "json_response",
    "parse",
    "problems",
    "read_body",
    "too_large",
]

PUSH_BASE = "/push/v1"
SEED_NOTIFY_PATH = "/_matrix/push/v1/notify"

NOTIFY_TOO_LARGE = "Notification object is too large."
BATCH_TOO_LARGE = "Batch request payload is too large."
_MAX_PROBLEMS = 10

_Request = TypeVar("_Request")


class TooLarge(Exception):
    """The request body is larger than the gateway accepts."""


def json_response(
    content: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer (orjson-encoded)."""
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def encoded_response(
    answer: Any, status: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """A JSON answer of one of the spec's objects (:mod:`fdpush.gateway_api`)."""
    return Response(encode(answer), status, headers, media_type="application/json")


def error_response(
    error: str,
    status: int,
    details: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """An error answer: the spec's ``{"error", "details"}``."""
    answer: ErrorResponse = {"error": error}
    if details is not None:
        answer["details"] = details
    return encoded_response(answer, status, headers)


async def read_body(request: Request, max_request_size_kb: int) -> bytes:
    """The request body; raises :class:`TooLarge` as soon as it exceeds the cap."""
    limit = max_request_size_kb * 1024
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise TooLarge
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise TooLarge
    return bytes(body)


def too_large(error: str, max_request_size_kb: int) -> Response:
    """The 413 answer: the endpoint's error text and ``details.max_request_size_kb``."""
    return error_response(error, 413, {"max_request_size_kb": max_request_size_kb})


def invalid(problems: list[str]) -> Response:
    """400 ``Invalid data format``.

    ``details.problems`` is ours (the schema allows further details): what a developer needs to
    find the mistake in their sender.
    """
    return error_response(INVALID_DATA, 400, {"problems": problems[:_MAX_PROBLEMS]})


def problems(exc: ValidationError) -> list[str]:
    """One line per validation error: where, and what is wrong."""
    return [
        f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    ]


def parse(body: bytes, kind: type[_Request]) -> tuple[_Request, dict[str, Any]] | Response:
    """The request validated strictly as ``kind`` (:func:`fdpush.gateway_api.validate_request`)
    and the raw JSON object, or the 400 ``Invalid data format``."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return invalid([f"(body): not JSON: {exc}"])
    if not isinstance(raw, dict):
        return invalid(["(body): must be a JSON object"])
    try:
        return validate_request(kind, raw), raw
    except ValidationError as exc:
        return invalid(problems(exc))


def batch_checks(ids: list[str], raw: dict[str, Any], limits: Limits) -> Response | None:
    """The batch rules after the schema, in the spec's priority order; None: all passed."""
    if len(ids) > limits.max_batch_size:
        return error_response(BATCH_TOO_BIG, 400, {"max_batch_size": limits.max_batch_size})
    duplicates = [item_id for item_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        return error_response(DUPLICATE_IDS, 400, {"duplicate_ids": duplicates})
    max_bytes = limits.max_notification_size_kb * 1024
    for item in raw["notifications"]:
        # "the byte length of the UTF-8 encoded JSON serialization of the notification object"
        if len(orjson.dumps(item["notification"])) > max_bytes:
            details = {"max_notification_size_kb": limits.max_notification_size_kb}
            return error_response(ITEM_TOO_LARGE, 400, details)
    return None


def batch_answer(results: list[NotificationResult]) -> Response:
    """200 with ``results`` (as given: request order) and their ``summary``."""
    statuses = Counter(result["status"] for result in results)
    summary: BatchSummary = {
        "total": len(results),
        "successful": statuses["success"],
        "failed": statuses["failed"],
        "partial": statuses["partial"],
    }
    answer: BatchNotificationResponse = {"results": results, "summary": summary}
    return encoded_response(answer)
