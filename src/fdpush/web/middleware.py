"""ASGI middleware: the body-size cap, and per-request metrics and access log.

Both are plain ASGI so they see every request, including those no route matches. The access
log names the route *template*, never the raw path: paths carry pushkeys.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from fdpush.logs import in_message
from fdpush.web.errors import TooLarge, refusal

__all__ = ["BodyLimitMiddleware", "HttpMetrics", "ObserveMiddleware"]

access_log = logging.getLogger("fdpush.access")


class BodyLimitMiddleware:
    """Answer 413 ``M_TOO_LARGE`` (RS API: ``PAYLOAD_TOO_LARGE``) to any body over
    ``max_bytes``, declared or streamed."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length":
                try:
                    declared = int(value)
                except ValueError:
                    declared = 0
                if declared > self.max_bytes:
                    await self._refuse(scope, receive, send)
                    return
        received = 0
        started = False

        async def counting_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # One of our errors, not an unexpected one: an app's own handlers (the RS
                    # API's, mounted inside) answer it in their shape instead of a 500.
                    raise self._too_large()
            return message

        async def tracking_send(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counting_receive, tracking_send)
        except TooLarge:
            if not started:
                await self._refuse(scope, receive, send)

    def _too_large(self) -> TooLarge:
        return TooLarge(f"Request body exceeds {self.max_bytes} bytes")

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        await refusal(scope, self._too_large())(scope, receive, send)


class HttpMetrics:
    """The request metrics of one app, in that app's registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.requests = Counter(
            "fdpush_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "fdpush_http_request_duration_seconds",
            "HTTP request latency by route template and method",
            ["route", "method"],
            registry=registry,
            buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
        )
        # With several API processes (serve --workers) one series per living process, labelled
        # with its pid: how the load spreads over them.
        self.process_requests = Gauge(
            "fdpush_http_process_requests",
            "HTTP requests this API process has answered since it started",
            registry=registry,
            multiprocess_mode="liveall",
        )


class ObserveMiddleware:
    """Count, time and log every request by its route template."""

    def __init__(self, app: ASGIApp, metrics: HttpMetrics, access_log_enabled: bool) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log_enabled = access_log_enabled

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def observing_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, observing_send)
        finally:
            elapsed = time.perf_counter() - start
            route: Any = scope.get("route")
            template = getattr(route, "path_format", None) or "unmatched"
            method = scope.get("method", "?")
            self.metrics.requests.labels(template, method, str(status)).inc()
            self.metrics.latency.labels(template, method).observe(elapsed)
            self.metrics.process_requests.inc()
            if self.access_log_enabled:
                duration_ms = round(elapsed * 1000.0, 1)
                access_log.info(
                    "%s %s %d %.1fms",
                    method,
                    template,
                    status,
                    duration_ms,
                    extra=in_message(
                        method=method, route=template, status=status, duration_ms=duration_ms
                    ),
                )
