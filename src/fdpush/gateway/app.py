"""The development gateway over HTTP: the Push Gateway API, and ``/_dev`` to look inside.

Push Gateway API (base ``/push/v1``; ``/_matrix/push/v1/notify`` for seed-era senders):
``POST notify``, ``POST notify/batch``, ``POST notifyEncrypted/batch``. A request is answered
in this order: the ``delay`` switch stalls it (unless it stalls the answer instead); the
``status`` switch answers it; a body over
the request cap is 413; then the spec's validation, first applicable error wins: 400
``Invalid data format`` (not JSON, or not the schema) → ``Batch size exceeds maximum limit``
→ ``Duplicate notification IDs in batch`` → ``Individual notification too large``; then the
items are delivered and answered with per-item results and a summary.

``/_dev``: ``GET inbox?app_id=&pushkey=[&since=]`` (one device's notifications, oldest first),
``DELETE inbox[?app_id=&pushkey=]``, ``GET notifications[?since=&limit=]`` (all devices, with a
``next`` cursor), ``GET|POST trouble``, ``GET|DELETE stats``, ``GET health``.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from fdpush.gateway.core import DevGateway, ForcedAnswer, ItemResult, SimulatedFailure
from fdpush.gateway.models import (
    EncryptedBatchRequest,
    PlainBatchRequest,
    PlainNotificationRequest,
    SeedNotificationRequest,
)
from fdpush.gateway.trouble import TroubleUpdate

__all__ = ["PUSH_BASE", "SEED_NOTIFY_PATH", "create_gateway_app"]

log = logging.getLogger("fdpush.gateway")

PUSH_BASE = "/push/v1"
SEED_NOTIFY_PATH = "/_matrix/push/v1/notify"

INVALID_DATA = "Invalid data format"
BATCH_TOO_BIG = "Batch size exceeds maximum limit"
DUPLICATE_IDS = "Duplicate notification IDs in batch"
ITEM_TOO_LARGE = "Individual notification too large"
_MAX_PROBLEMS = 10
_MAX_NOTIFICATIONS_PAGE = 10_000

# Error texts for answers forced by the ``status`` switch: the spec's examples where it has
# one (400, 401, 500, 503), plain ones otherwise.
_STATUS_ERRORS = {
    400: INVALID_DATA,
    401: "Missing or invalid mutual TLS (mTLS) certificate.",
    408: "Request timeout.",
    429: "Too many requests.",
    500: "Unexpected failure during batch processing.",
    502: "Bad gateway.",
    503: "Push Gateway under maintenance or overloaded.",
    504: "Gateway timeout.",
}


class _TooLarge(Exception):
    pass


def _json(content: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(content), status, headers, media_type="application/json")


def _invalid(problems: list[str]) -> Response:
    # ``details.problems`` is ours (the schema allows further details): what a developer needs
    # to find the mistake in their sender.
    return _json({"error": INVALID_DATA, "details": {"problems": problems[:_MAX_PROBLEMS]}}, 400)


def _problems(exc: ValidationError) -> list[str]:
    return [
        f"{'.'.join(str(part) for part in error['loc']) or '(body)'}: {error['msg']}"
        for error in exc.errors(include_url=False)
    ]


def create_gateway_app(gateway: DevGateway) -> Starlette:
    """The ASGI app serving ``gateway`` (see the module docstring for what it answers)."""

    async def read_body(request: Request) -> bytes:
        limit = gateway.limits.max_request_size_kb * 1024
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise _TooLarge
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > limit:
                raise _TooLarge
        return bytes(body)

    def gateway_endpoint(
        handle: Callable[[Request, bytes], Awaitable[Response]], too_large_error: str
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            path = request.url.path
            gateway.count_request(path)
            delay, point = gateway.take_delay()
            if delay and point == "before":
                await asyncio.sleep(delay)
            forced = gateway.take_forced_answer()
            if forced is not None:
                response = _forced(forced, gateway, too_large_error)
            else:
                try:
                    body = await read_body(request)
                except _TooLarge:
                    details = {"max_request_size_kb": gateway.limits.max_request_size_kb}
                    response = _json({"error": too_large_error, "details": details}, 413)
                except ClientDisconnect:
                    # The sender gave up during the stall: nothing is delivered.
                    gateway.count_abandoned()
                    log.info("%s %s: the sender went away before it was read", request.method, path)
                    return Response(status_code=499)  # never sent: nobody is listening
                else:
                    response = await handle(request, body)
            if delay and point == "after":
                await asyncio.sleep(delay)
            gateway.count_response(response.status_code)
            log.info("%s %s → %s", request.method, path, response.status_code)
            return response

        return endpoint

    async def notify_encrypted_batch(request: Request, body: bytes) -> Response:
        parsed = _parse(body, EncryptedBatchRequest)
        if isinstance(parsed, Response):
            return parsed
        model, raw = parsed
        assert isinstance(model, EncryptedBatchRequest)
        refused = _batch_checks([item.id for item in model.notifications], raw, gateway)
        if refused is not None:
            return refused
        results = gateway.deliver_encrypted(
            request.url.path, model.notifications, raw["notifications"]
        )
        return _batch_answer(results)

    async def notify_batch(request: Request, body: bytes) -> Response:
        parsed = _parse(body, PlainBatchRequest)
        if isinstance(parsed, Response):
            return parsed
        model, raw = parsed
        assert isinstance(model, PlainBatchRequest)
        refused = _batch_checks([item.id for item in model.notifications], raw, gateway)
        if refused is not None:
            return refused
        results = gateway.deliver_plain(request.url.path, model.notifications, raw["notifications"])
        return _batch_answer(results)

    def notify_handler(
        schema: type[PlainNotificationRequest] | type[SeedNotificationRequest],
    ) -> Callable[[Request, bytes], Awaitable[Response]]:
        async def notify(request: Request, body: bytes) -> Response:
            parsed = _parse(body, schema)
            if isinstance(parsed, Response):
                return parsed
            model, raw = parsed
            assert isinstance(model, PlainNotificationRequest | SeedNotificationRequest)
            try:
                rejected = gateway.deliver_notify(
                    request.url.path, model.notification, raw["notification"]
                )
            except SimulatedFailure as exc:
                return _json({"error": str(exc)}, 500)
            return _json({"rejected": rejected})

        return notify

    # --- /_dev ---------------------------------------------------------------------------------

    async def get_inbox(request: Request) -> Response:
        app_id = request.query_params.get("app_id")
        pushkey = request.query_params.get("pushkey")
        if app_id is None or pushkey is None:
            return _json({"error": "app_id and pushkey are required"}, 400)
        since = _int_param(request, "since", 0)
        if since is None:
            return _json({"error": "since must be a non-negative integer"}, 400)
        received = gateway.inbox(app_id, pushkey, since=since)
        return _json(
            {
                "app_id": app_id,
                "pushkey": pushkey,
                "notifications": [r.as_json() for r in received],
            }
        )

    async def delete_inbox(request: Request) -> Response:
        app_id = request.query_params.get("app_id")
        pushkey = request.query_params.get("pushkey")
        if (app_id is None) != (pushkey is None):
            return _json({"error": "give both app_id and pushkey, or neither"}, 400)
        return _json({"deleted": gateway.clear_inbox(app_id, pushkey)})

    async def get_notifications(request: Request) -> Response:
        since = _int_param(request, "since", 0)
        limit = _int_param(request, "limit", 1000)
        if since is None or limit is None or not 1 <= limit <= _MAX_NOTIFICATIONS_PAGE:
            return _json(
                {
                    "error": "since must be a non-negative integer, "
                    f"limit an integer in 1..{_MAX_NOTIFICATIONS_PAGE}"
                },
                400,
            )
        received = gateway.notifications(since, limit=limit)
        next_cursor = received[-1].seq if received else max(since, 0)
        return _json({"notifications": [r.as_json() for r in received], "next": next_cursor})

    async def get_trouble(_request: Request) -> Response:
        return _json(gateway.switches())

    async def post_trouble(request: Request) -> Response:
        try:
            update = TroubleUpdate.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            return _json({"error": "invalid trouble switches", "problems": _problems(exc)}, 400)
        try:
            return _json(gateway.update_trouble(update))
        except ValueError as exc:
            return _json({"error": str(exc)}, 400)

    async def get_stats(_request: Request) -> Response:
        return _json(gateway.stats())

    async def delete_stats(_request: Request) -> Response:
        gateway.reset_stats()
        return _json(gateway.stats())

    async def health(_request: Request) -> Response:
        return _json({"status": "ok"})

    notify_too_large = "Notification object is too large."
    batch_too_large = "Batch request payload is too large."
    routes = [
        Route(
            f"{PUSH_BASE}/notify",
            gateway_endpoint(notify_handler(PlainNotificationRequest), notify_too_large),
            methods=["POST"],
        ),
        Route(
            SEED_NOTIFY_PATH,
            gateway_endpoint(notify_handler(SeedNotificationRequest), notify_too_large),
            methods=["POST"],
        ),
        Route(
            f"{PUSH_BASE}/notify/batch",
            gateway_endpoint(notify_batch, batch_too_large),
            methods=["POST"],
        ),
        Route(
            f"{PUSH_BASE}/notifyEncrypted/batch",
            gateway_endpoint(notify_encrypted_batch, batch_too_large),
            methods=["POST"],
        ),
        Route("/_dev/inbox", get_inbox, methods=["GET"]),
        Route("/_dev/inbox", delete_inbox, methods=["DELETE"]),
        Route("/_dev/notifications", get_notifications, methods=["GET"]),
        Route("/_dev/trouble", get_trouble, methods=["GET"]),
        Route("/_dev/trouble", post_trouble, methods=["POST"]),
        Route("/_dev/stats", get_stats, methods=["GET"]),
        Route("/_dev/stats", delete_stats, methods=["DELETE"]),
        Route("/_dev/health", health, methods=["GET"]),
    ]
    app = Starlette(routes=routes)
    app.state.gateway = gateway
    return app


def _parse(body: bytes, schema: type[BaseModel]) -> tuple[BaseModel, dict[str, Any]] | Response:
    """The validated model and the raw JSON object, or the 400 ``Invalid data format``."""
    try:
        raw = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return _invalid([f"(body): not JSON: {exc}"])
    if not isinstance(raw, dict):
        return _invalid(["(body): must be a JSON object"])
    try:
        return schema.model_validate(raw), raw
    except ValidationError as exc:
        return _invalid(_problems(exc))


def _batch_checks(ids: list[str], raw: dict[str, Any], gateway: DevGateway) -> Response | None:
    """The batch rules after the schema, in the spec's priority order; None: all passed."""
    limits = gateway.limits
    if len(ids) > limits.max_batch_size:
        return _json(
            {"error": BATCH_TOO_BIG, "details": {"max_batch_size": limits.max_batch_size}}, 400
        )
    duplicates = [item_id for item_id, count in Counter(ids).items() if count > 1]
    if duplicates:
        return _json({"error": DUPLICATE_IDS, "details": {"duplicate_ids": duplicates}}, 400)
    max_bytes = limits.max_notification_size_kb * 1024
    for item in raw["notifications"]:
        # "the byte length of the UTF-8 encoded JSON serialization of the notification object"
        if len(orjson.dumps(item["notification"])) > max_bytes:
            details = {"max_notification_size_kb": limits.max_notification_size_kb}
            return _json({"error": ITEM_TOO_LARGE, "details": details}, 400)
    return None


def _batch_answer(results: list[ItemResult]) -> Response:
    statuses = Counter(result.status for result in results)
    summary = {
        "total": len(results),
        "successful": statuses["success"],
        "failed": statuses["failed"],
        "partial": statuses["partial"],
    }
    return _json({"results": [result.as_json() for result in results], "summary": summary})


def _forced(answer: ForcedAnswer, gateway: DevGateway, too_large_error: str) -> Response:
    headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
    if answer.body is not None:
        return Response(answer.body, answer.status, headers, media_type="text/plain")
    body: dict[str, Any] = {"error": _STATUS_ERRORS.get(answer.status, f"HTTP {answer.status}")}
    if answer.status == 413:
        body = {
            "error": too_large_error,
            "details": {"max_request_size_kb": gateway.limits.max_request_size_kb},
        }
    return _json(body, answer.status, headers)


def _int_param(request: Request, name: str, default: int) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    return int(value) if value.isdigit() else None
