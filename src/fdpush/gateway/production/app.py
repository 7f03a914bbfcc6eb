"""The production gateway over HTTP: the Push Gateway API, health and metrics.

Each Push Gateway API request is answered in this order: 401 without an accepted client
certificate; 413 over the size cap; the spec's 400s (shared with the development gateway,
:mod:`fdpush.gateway.validation`); 503 + ``Retry-After`` when a provider's queue is full; then
the per-item answer once every push is accepted, rejected or failed.

``notify`` (also at the seed-era path ``/_matrix/push/v1/notify``, whose notification may
carry the encrypted fields) has no per-item status: it answers ``{"rejected": [...]}`` when
every device was reached or rejected, 503 + ``Retry-After`` when some were not for a transient
reason, and 500 when some were refused for good (an unconfigured app_id, a notification the
provider refuses).

Also: ``GET /health/live``, ``GET /health/ready`` (503 until the provider clients are made and
while stopping), ``GET /metrics`` (Prometheus).
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route

from fdpush.gateway.production.answers import encrypted_push, item_result, plain_pushes
from fdpush.gateway.production.config import GatewayConfig
from fdpush.gateway.production.dispatch import Dispatcher, Overloaded
from fdpush.gateway.production.metrics import GatewayMetrics
from fdpush.gateway.production.push import Push
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
    read_body,
    too_large,
)
from fdpush.gateway_api import (
    BatchNotificationRequest,
    EncryptedBatchNotificationRequest,
    NotifyResponse,
    PlainNotificationRequest,
    SeedNotificationRequest,
)

__all__ = ["MTLS_ERROR", "OVERLOADED_ERROR", "create_production_app"]

log = logging.getLogger("fdpush.gateway")

MTLS_ERROR = "Missing or invalid mutual TLS (mTLS) certificate."
OVERLOADED_ERROR = "Push Gateway under maintenance or overloaded."
NOT_DELIVERED_ERROR = "Unexpected failure during processing."

Handler = Callable[[bytes], Awaitable[Response]]


def client_subject(request: Request) -> str | None:
    """The RFC 4514 subject of the verified client certificate, None without one."""
    tls: dict[str, Any] = request.scope.get("extensions", {}).get("tls") or {}
    name = tls.get("client_cert_name")
    return name if isinstance(name, str) else None


def create_production_app(
    config: GatewayConfig, dispatcher: Dispatcher, metrics: GatewayMetrics
) -> Starlette:
    """The ASGI app of the production gateway (see the module docstring)."""
    limits = config.limits.as_limits()
    allowed = frozenset(config.listen.allowed_subjects)
    state = {"ready": False}

    def endpoint(handle: Handler, too_large_error: str, name: str) -> Callable[..., Any]:
        async def answer(request: Request) -> Response:
            subject = client_subject(request)
            if subject is None or (allowed and subject not in allowed):
                return error_response(MTLS_ERROR, 401)
            try:
                body = await read_body(request, limits.max_request_size_kb)
            except TooLarge:
                return too_large(too_large_error, limits.max_request_size_kb)
            except ClientDisconnect:
                return Response(status_code=499)  # never sent: nobody is listening
            try:
                return await handle(body)
            except Overloaded as exc:
                headers = {"Retry-After": str(exc.retry_after)}
                return error_response(OVERLOADED_ERROR, 503, headers=headers)

        async def counted(request: Request) -> Response:
            response = await answer(request)
            metrics.requests.labels(name, str(response.status_code)).inc()
            log.info("%s → %s", name, response.status_code)
            return response

        return counted

    async def notify_encrypted_batch(body: bytes) -> Response:
        parsed = parse(body, EncryptedBatchNotificationRequest)
        if isinstance(parsed, Response):
            return parsed
        model, raw = parsed
        refused = batch_checks([item["id"] for item in model["notifications"]], raw, limits)
        if refused is not None:
            return refused
        pushes = [encrypted_push(item["notification"]) for item in model["notifications"]]
        deliveries = await dispatcher.deliver(pushes)
        return batch_answer(
            [
                item_result(item["id"], [push], [delivery])
                for item, push, delivery in zip(
                    model["notifications"], pushes, deliveries, strict=True
                )
            ]
        )

    async def notify_batch(body: bytes) -> Response:
        parsed = parse(body, BatchNotificationRequest)
        if isinstance(parsed, Response):
            return parsed
        model, raw = parsed
        refused = batch_checks([item["id"] for item in model["notifications"]], raw, limits)
        if refused is not None:
            return refused
        per_item = [plain_pushes(item["notification"]) for item in model["notifications"]]
        deliveries = await dispatcher.deliver([push for pushes in per_item for push in pushes])
        results, start = [], 0
        for item, pushes in zip(model["notifications"], per_item, strict=True):
            results.append(item_result(item["id"], pushes, deliveries[start : start + len(pushes)]))
            start += len(pushes)
        return batch_answer(results)

    def notify_handler(
        schema: type[PlainNotificationRequest] | type[SeedNotificationRequest],
    ) -> Handler:
        async def notify(body: bytes) -> Response:
            parsed = parse(body, schema)
            if isinstance(parsed, Response):
                return parsed
            model, _raw = parsed
            return await notify_answer(plain_pushes(model["notification"]))

        return notify

    async def notify_answer(pushes: list[Push]) -> Response:
        deliveries = await dispatcher.deliver(pushes)
        failed = [d for d in deliveries if d.outcome == "failed"]
        if failed:
            details = {"failed": len(failed), "error": failed[0].error}
            if all(d.transient for d in failed):
                headers = {"Retry-After": str(config.delivery.overload_retry_after_seconds)}
                return error_response(OVERLOADED_ERROR, 503, details, headers)
            return error_response(NOT_DELIVERED_ERROR, 500, details)
        rejected = [
            p.pushkey for p, d in zip(pushes, deliveries, strict=True) if d.outcome == "rejected"
        ]
        return encoded_response(NotifyResponse(rejected=list(dict.fromkeys(rejected))))

    async def live(_request: Request) -> Response:
        return json_response({"status": "ok"})

    async def ready(_request: Request) -> Response:
        if not state["ready"]:
            return json_response({"status": "starting or stopping"}, 503)
        return json_response({"status": "ok"})

    async def metrics_endpoint(_request: Request) -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @asynccontextmanager
    async def lifespan(_app: Starlette) -> AsyncIterator[None]:
        await dispatcher.start()
        state["ready"] = True
        try:
            yield
        finally:
            state["ready"] = False
            await dispatcher.aclose()

    routes = [
        Route(
            f"{PUSH_BASE}/notify",
            endpoint(notify_handler(PlainNotificationRequest), NOTIFY_TOO_LARGE, "notify"),
            methods=["POST"],
        ),
        Route(
            SEED_NOTIFY_PATH,
            endpoint(notify_handler(SeedNotificationRequest), NOTIFY_TOO_LARGE, "seed notify"),
            methods=["POST"],
        ),
        Route(
            f"{PUSH_BASE}/notify/batch",
            endpoint(notify_batch, BATCH_TOO_LARGE, "notify/batch"),
            methods=["POST"],
        ),
        Route(
            f"{PUSH_BASE}/notifyEncrypted/batch",
            endpoint(notify_encrypted_batch, BATCH_TOO_LARGE, "notifyEncrypted/batch"),
            methods=["POST"],
        ),
        Route("/health/live", live, methods=["GET"]),
        Route("/health/ready", ready, methods=["GET"]),
        Route("/metrics", metrics_endpoint, methods=["GET"]),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
