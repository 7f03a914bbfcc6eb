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
from collections.abc import Awaitable, Callable

from pydantic import ValidationError
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from fdpush.gateway.core import DevGateway, ForcedAnswer, SimulatedFailure
from fdpush.gateway.trouble import TroubleUpdate
from fdpush.gateway.validation import (
    BATCH_TOO_LARGE,
    NOTIFY_TOO_LARGE,
    PUSH_BASE,
    SEED_NOTIFY_PATH,
    TooLarge,
    batch_answer,
    batch_checks,
    encoded_response,
    error_response,
    json_response,
    parse,
    problems,
    read_body,
    too_large,
)
from fdpush.gateway_api import (
    INVALID_DATA,
    BatchNotificationRequest,
    EncryptedBatchNotificationRequest,
    NotifyResponse,
    PlainNotificationRequest,
    SeedNotificationRequest,
)

__all__ = ["PUSH_BASE", "SEED_NOTIFY_PATH", "create_gateway_app"]

log = logging.getLogger("fdpush.gateway")

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


def create_gateway_app(gateway: DevGateway) -> Starlette:
    """The ASGI app serving ``gateway`` (see the module docstring for what it answers)."""

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
                    body = await read_body(request, gateway.limits.max_request_size_kb)
                except TooLarge:
                    response = too_large(too_large_error, gateway.limits.max_request_size_kb)
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
        parsed = parse(body, EncryptedBatchNotificationRequest)
        if isinstance(parsed, Response):
            return parsed
        model, raw = parsed
        refused = batch_checks([item["id"] for item in model["notifications"]], raw, gateway.limits)
        if refused is not None:
            return refused
        results = gateway.deliver_encrypted(
            request.url.path, model["notifications"], raw["notifications"]
        )
        return batch_answer(results)

    async def notify_batch(request: Request, body: bytes) -> Response:
        parsed = parse(body, BatchNotificationRequest)
        if isinstance(parsed, Response):
            return parsed
        model, raw = parsed
        refused = batch_checks([item["id"] for item in model["notifications"]], raw, gateway.limits)
        if refused is not None:
            return refused
        results = gateway.deliver_plain(
            request.url.path, model["notifications"], raw["notifications"]
        )
        return batch_answer(results)

    def notify_handler(
        schema: type[PlainNotificationRequest] | type[SeedNotificationRequest],
    ) -> Callable[[Request, bytes], Awaitable[Response]]:
        async def notify(request: Request, body: bytes) -> Response:
            parsed = parse(body, schema)
            if isinstance(parsed, Response):
                return parsed
            model, raw = parsed
            try:
                rejected = gateway.deliver_notify(
                    request.url.path, model["notification"], raw["notification"]
                )
            except SimulatedFailure as exc:
                return error_response(str(exc), 500)
            return encoded_response(NotifyResponse(rejected=rejected))

        return notify

    # --- /_dev ---------------------------------------------------------------------------------

    async def get_inbox(request: Request) -> Response:
        app_id = request.query_params.get("app_id")
        pushkey = request.query_params.get("pushkey")
        if app_id is None or pushkey is None:
            return json_response({"error": "app_id and pushkey are required"}, 400)
        since = _int_param(request, "since", 0)
        if since is None:
            return json_response({"error": "since must be a non-negative integer"}, 400)
        received = gateway.inbox(app_id, pushkey, since=since)
        return json_response(
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
            return json_response({"error": "give both app_id and pushkey, or neither"}, 400)
        return json_response({"deleted": gateway.clear_inbox(app_id, pushkey)})

    async def get_notifications(request: Request) -> Response:
        since = _int_param(request, "since", 0)
        limit = _int_param(request, "limit", 1000)
        if since is None or limit is None or not 1 <= limit <= _MAX_NOTIFICATIONS_PAGE:
            return json_response(
                {
                    "error": "since must be a non-negative integer, "
                    f"limit an integer in 1..{_MAX_NOTIFICATIONS_PAGE}"
                },
                400,
            )
        received = gateway.notifications(since, limit=limit)
        next_cursor = received[-1].seq if received else max(since, 0)
        return json_response(
            {"notifications": [r.as_json() for r in received], "next": next_cursor}
        )

    async def get_trouble(_request: Request) -> Response:
        return json_response(gateway.switches())

    async def post_trouble(request: Request) -> Response:
        try:
            update = TroubleUpdate.model_validate_json(await request.body() or b"{}")
        except ValidationError as exc:
            return json_response(
                {"error": "invalid trouble switches", "problems": problems(exc)}, 400
            )
        try:
            return json_response(gateway.update_trouble(update))
        except ValueError as exc:
            return json_response({"error": str(exc)}, 400)

    async def get_stats(_request: Request) -> Response:
        return json_response(gateway.stats())

    async def delete_stats(_request: Request) -> Response:
        gateway.reset_stats()
        return json_response(gateway.stats())

    async def health(_request: Request) -> Response:
        return json_response({"status": "ok"})

    notify_too_large = NOTIFY_TOO_LARGE
    batch_too_large = BATCH_TOO_LARGE
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


def _forced(answer: ForcedAnswer, gateway: DevGateway, too_large_error: str) -> Response:
    headers = {} if answer.retry_after is None else {"Retry-After": str(answer.retry_after)}
    if answer.body is not None:
        return Response(answer.body, answer.status, headers, media_type="text/plain")
    if answer.status == 413:
        details = {"max_request_size_kb": gateway.limits.max_request_size_kb}
        return error_response(too_large_error, 413, details, headers)
    error = _STATUS_ERRORS.get(answer.status, f"HTTP {answer.status}")
    return error_response(error, answer.status, headers=headers)


def _int_param(request: Request, name: str, default: int) -> int | None:
    value = request.query_params.get(name)
    if value is None:
        return default
    return int(value) if value.isdigit() else None
