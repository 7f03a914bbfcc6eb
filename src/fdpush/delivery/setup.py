"""Building a delivery worker from the settings (for ``serve`` and ``worker``)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from fdpush.config import Settings
from fdpush.delivery.compose import refusal_by
from fdpush.delivery.gateway import GatewayClient
from fdpush.delivery.worker import DeliveryMetrics, DeliveryWorker, WorkerOptions
from fdpush.domain.gateway_url import GatewayUrlPolicy
from fdpush.domain.keys import KeyVault
from fdpush.storage.database import Database

__all__ = ["make_worker"]


def make_worker(
    settings: Settings, db: Database, vault: KeyVault, registry: CollectorRegistry | None
) -> tuple[DeliveryWorker, GatewayClient]:
    """A worker and the gateway client it owns (close the client after the worker stops)."""
    client = GatewayClient(
        ca_file=settings.gateway_ca_file,
        client_cert=settings.gateway_client_cert,
        client_key=settings.gateway_client_key,
        timeout_seconds=settings.gateway_timeout_seconds,
    )
    worker = DeliveryWorker(
        db,
        vault,
        client,
        options=WorkerOptions(
            batch_size=settings.delivery_batch_size,
            concurrency_per_gateway=settings.delivery_concurrency_per_gateway,
            max_age_seconds=settings.delivery_max_age_seconds,
            lease_seconds=settings.delivery_lease_seconds,
            history_days=settings.history_days,
            prune_interval_seconds=settings.delivery_prune_interval_seconds,
        ),
        # The allow-list is checked again at send time: a gateway removed from it gets nothing.
        gateway_refusal=refusal_by(
            GatewayUrlPolicy(
                settings.gateway_allowlist, allow_http=settings.gateway_allow_http
            ).check
        ),
        metrics=None if registry is None else DeliveryMetrics(registry),
        listen_url=settings.database_url if db.dialect == "postgresql" else None,
    )
    return worker, client
