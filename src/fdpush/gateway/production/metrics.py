"""The production gateway's Prometheus metrics, in a registry of its own (``GET /metrics``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

__all__ = ["GatewayMetrics"]


class GatewayMetrics:
    """Every metric the gateway exports; one instance per gateway."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "fdpush_gateway_requests",
            "Push Gateway API requests, by endpoint and answer status.",
            ["endpoint", "status"],
            registry=r,
        )
        self.items = Counter(
            "fdpush_gateway_deliveries",
            "Notifications to one device, by provider and outcome "
            "(accepted, rejected, remembered, failed).",
            ["provider", "outcome"],
            registry=r,
        )
        self.provider_answers = Counter(
            "fdpush_gateway_provider_answers",
            "Provider answers by provider, HTTP status (none: no answer) and reason.",
            ["provider", "status", "reason"],
            registry=r,
        )
        self.provider_latency = Histogram(
            "fdpush_gateway_provider_latency_seconds",
            "Time of one request to the provider.",
            ["provider"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
            registry=r,
        )
        self.retries = Counter(
            "fdpush_gateway_retries",
            "Attempts repeated after a transient provider failure.",
            ["provider"],
            registry=r,
        )
        self.rejection_memory = Gauge(
            "fdpush_gateway_rejection_memory_size",
            "Pushkeys remembered as rejected.",
            registry=r,
        )
        self.queue_depth = Gauge(
            "fdpush_gateway_queue_depth",
            "Notifications waiting for or in the hands of a provider.",
            ["provider"],
            registry=r,
        )
        self.overloaded = Counter(
            "fdpush_gateway_overloaded",
            "Requests answered 503 because a provider's queue was full.",
            ["provider"],
            registry=r,
        )
        self.token_refreshes = Counter(
            "fdpush_gateway_token_refreshes",
            "New provider credentials made (APNs provider JWTs, FCM access tokens).",
            ["provider", "app_id"],
            registry=r,
        )
