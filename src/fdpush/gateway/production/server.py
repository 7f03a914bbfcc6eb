"""Serving the production gateway: TLS that asks for client certificates, in a process or a thread.

The TLS handshake asks for a client certificate and verifies any it gets against the configured
CA (a certificate of another CA never reaches the app); a client without one gets the spec's
401 body, and so does a certificate whose subject is not in ``allowed_subjects``. To tell the
app whose certificate it was, the connection's verified certificate goes into the request's
ASGI ``tls`` extension (``client_cert_name``, RFC 4514).
"""

from __future__ import annotations

import asyncio
import logging
import math
import socket
import ssl
import time
from collections.abc import Callable
from typing import Any

import uvicorn
from cryptography import x509
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from fdpush import heap
from fdpush.gateway.production.app import create_production_app
from fdpush.gateway.production.config import GatewayConfig
from fdpush.gateway.production.dispatch import Dispatcher
from fdpush.gateway.production.metrics import GatewayMetrics
from fdpush.gateway.production.rejections import RejectionMemory
from fdpush.gateway.runner import bind_socket, serve_in_thread

__all__ = ["ProductionGateway", "ProductionGatewayThread", "serve_production"]

log = logging.getLogger("fdpush.gateway")


class _ClientCertProtocol(HttpToolsProtocol):
    """uvicorn's HTTP/1.1 protocol, handing the verified client certificate to the app."""

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        ssl_object = transport.get_extra_info("ssl_object")
        der = ssl_object.getpeercert(binary_form=True) if ssl_object is not None else None
        tls: dict[str, Any] = {"client_cert_name": None, "client_cert_chain": []}
        if der:
            certificate = x509.load_der_x509_certificate(der)
            tls["client_cert_name"] = certificate.subject.rfc4514_string()
        inner = self.app

        async def app_with_tls(scope: Any, receive: Any, send: Any) -> None:
            scope.setdefault("extensions", {})["tls"] = tls
            await inner(scope, receive, send)

        self.app = app_with_tls


# Libraries whose debug (hpack, h2, httpcore) or info (httpx) lines carry request paths and
# headers — pushkeys and provider tokens. They never log below these levels here.
_QUIET_LOGGERS = {
    "hpack": logging.INFO,
    "h2": logging.INFO,
    "httpcore": logging.INFO,
    "httpx": logging.WARNING,
}


def _quiet_http_libraries() -> None:
    for name, level in _QUIET_LOGGERS.items():
        logger = logging.getLogger(name)
        logger.setLevel(max(logger.level, level))  # a floor, whatever the root's level


class ProductionGateway:
    """The production gateway's parts, wired from the configuration."""

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """``clock`` (monotonic: deadlines, pauses) and ``wall_clock`` (token ages, the
        rejection memory's expiry) are for tests that move time."""
        _quiet_http_libraries()
        self.config = config
        self.metrics = GatewayMetrics()
        delivery = config.delivery
        wall = wall_clock or time.time
        self.memory = RejectionMemory(
            delivery.rejection_memory_hours * 3600, path=delivery.rejection_memory_file, clock=wall
        )
        self.dispatcher = Dispatcher(
            config, self.memory, self.metrics, clock=clock or time.monotonic, wall_clock=wall
        )
        self.app = create_production_app(config, self.dispatcher, self.metrics)

    def server(self) -> uvicorn.Server:
        """A uvicorn server for the app with the configured TLS."""
        listen = self.config.listen
        options: dict[str, Any] = {}
        if listen.cert is not None and listen.key is not None:
            options = {"ssl_certfile": str(listen.cert), "ssl_keyfile": str(listen.key)}
            if listen.client_ca is not None:
                options["ssl_ca_certs"] = str(listen.client_ca)
                options["ssl_cert_reqs"] = ssl.CERT_OPTIONAL  # none → 401 with the spec's body
        config = uvicorn.Config(
            self.app,
            http=_ClientCertProtocol,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="on",
            # Requests in flight get their answers before the provider connections close.
            timeout_graceful_shutdown=math.ceil(self.config.delivery.answer_within_seconds) + 2,
            backlog=1024,
            **options,
        )
        return uvicorn.Server(config)


def serve_production(config: GatewayConfig, *, on_listening: Callable[[str], None]) -> bool:
    """Serve until SIGINT/SIGTERM; False when the server could not start.

    Raises OSError when the address cannot be bound.
    """
    listen = config.listen
    sock = bind_socket(listen.host, listen.port)
    shown_host = f"[{listen.host}]" if ":" in listen.host else listen.host
    on_listening(f"https://{shown_host}:{sock.getsockname()[1]}")
    server = ProductionGateway(config).server()
    heap.settle()  # this process serves until it stops (not so the thread's host)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
    return server.started


class ProductionGatewayThread:
    """A production gateway on loopback, served from a background thread (tests, demo, bench).

    ``gateway`` gives access to its parts (the rejection memory, the metrics).
    """

    def __init__(
        self,
        config: GatewayConfig,
        *,
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
    ) -> None:
        """Start serving now (on ``config.listen.host``, any free port); returns once ready."""
        self.gateway = ProductionGateway(config, clock=clock, wall_clock=wall_clock)
        self._socket: socket.socket = bind_socket(config.listen.host, 0)
        port = self._socket.getsockname()[1]
        self.url = f"https://{config.listen.host}:{port}"
        self._server = self.gateway.server()
        try:
            self._thread = serve_in_thread(self._server, self._socket)
        except RuntimeError:
            self._socket.close()
            raise RuntimeError("the production gateway did not start") from None

    @property
    def push_url(self) -> str:
        """The base URL a pusher's ``data.url`` names."""
        return f"{self.url}/push/v1/"

    def stop(self) -> None:
        """Stop serving and wait for the thread."""
        self._server.should_exit = True
        self._thread.join(15)
        self._socket.close()

    def __enter__(self) -> ProductionGatewayThread:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop()
