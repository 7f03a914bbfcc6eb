"""The development Push Gateway: the gateway end of the chain, on one laptop.

It serves the Push Gateway API (``notify``, ``notify/batch``, ``notifyEncrypted/batch``) with
the spec's validation and error bodies, over TLS with optional client-certificate checking.
Instead of calling APNs/FCM it records what each device would receive (readable over
``/_dev/inbox``), and it can be told to misbehave: reject pushkeys (once), fail items, answer
5xx/429/503, stall. Run it with ``fdpush gateway``; see ``docs/dev-gateway.md``.

The production gateway, which forwards to APNs and FCM, is :mod:`fdpush.gateway.production`
(``fdpush gateway --config FILE``; ``docs/gateway.md``).

In a test::

    pki = make_test_pki(tmp_path)
    with GatewayThread(DevGateway(), pki=pki) as running:
        ...  # send to running.push_url with pki's client cert, then:
        running.gateway.inbox(app_id, pushkey)
"""

from fdpush.gateway.app import create_gateway_app
from fdpush.gateway.certs import TestPki, make_test_pki
from fdpush.gateway.core import DevGateway
from fdpush.gateway.inbox import Received
from fdpush.gateway.render import provider_for, render
from fdpush.gateway.runner import (
    GatewayProcess,
    GatewayThread,
    RunningGateway,
    TlsFiles,
    build_server,
)
from fdpush.gateway.trouble import Limits, Trouble, TroubleUpdate

__all__ = [
    "DevGateway",
    "GatewayProcess",
    "GatewayThread",
    "Limits",
    "Received",
    "RunningGateway",
    "TestPki",
    "TlsFiles",
    "Trouble",
    "TroubleUpdate",
    "build_server",
    "create_gateway_app",
    "make_test_pki",
    "provider_for",
    "render",
]
