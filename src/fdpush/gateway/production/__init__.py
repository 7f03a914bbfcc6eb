"""The production Push Gateway: the Push Gateway API in front of APNs and FCM.

Chosen with ``mode = "production"`` in the gateway's configuration file (``fdpush gateway
--config FILE``; see ``docs/gateway.md``). The layers, one module each:

- :mod:`~fdpush.gateway.production.config`: the configuration file, read once.
- :mod:`~fdpush.gateway.production.app`: the HTTP layer (mTLS subject check, the spec's
  validation and error bodies, health, metrics).
- :mod:`~fdpush.gateway.production.answers`: notifications → pushes, deliveries → answers.
- :mod:`~fdpush.gateway.production.dispatch`: routing, retries, deadlines, queues, pauses.
- :mod:`~fdpush.gateway.production.apns` and :mod:`~fdpush.gateway.production.fcm`: one
  provider client each, behind :class:`~fdpush.gateway.production.push.Sender`.
- :mod:`~fdpush.gateway.production.tokens`: the APNs provider JWT and FCM access tokens.
- :mod:`~fdpush.gateway.production.rejections`: the rejection memory.
- :mod:`~fdpush.gateway.production.server`: serving it (a process or a thread).
"""

from fdpush.gateway.production.config import GatewayConfig, load_config
from fdpush.gateway.production.server import (
    ProductionGateway,
    ProductionGatewayThread,
    serve_production,
)

__all__ = [
    "GatewayConfig",
    "ProductionGateway",
    "ProductionGatewayThread",
    "load_config",
    "serve_production",
]
