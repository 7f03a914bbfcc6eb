"""The client certificate of a mutual-TLS connection, handed to the app in the ASGI scope.

The installed uvicorn does not put the peer certificate into the scope. This protocol (uvicorn's
own, extended) reads it from the connection's SSL object once per connection and gives each
request on it ``scope["extensions"]["tls"]["client_cert"]``: the verified certificate as
:meth:`ssl.SSLSocket.getpeercert` returns it (``subject``, ``subjectAltName``, …).
"""

from __future__ import annotations

import asyncio
from typing import Any

from uvicorn.protocols.http.auto import AutoHTTPProtocol

__all__ = ["client_cert_protocol"]


class _WithPeerCert:
    """The app, with this connection's client certificate added to each request's scope."""

    def __init__(self, app: Any, cert: dict[str, Any]) -> None:
        self._app = app
        self._cert = cert

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            extensions = {**scope.get("extensions", {}), "tls": {"client_cert": self._cert}}
            scope = {**scope, "extensions": extensions}
        await self._app(scope, receive, send)


def client_cert_protocol(base: type[Any] | None = None) -> type[asyncio.Protocol]:
    """uvicorn's HTTP protocol class (``base``, default uvicorn's own choice) that passes the
    client certificate on."""
    parent: Any = base or AutoHTTPProtocol

    class ClientCertProtocol(parent):  # type: ignore[misc]
        def connection_made(self, transport: asyncio.BaseTransport) -> None:
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            cert = ssl_object.getpeercert() if ssl_object is not None else None
            if cert:
                self.app: Any = _WithPeerCert(self.app, cert)

    return ClientCertProtocol
