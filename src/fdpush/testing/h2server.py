"""A small HTTP/2 server over TLS (ALPN ``h2``) for the mock providers, built on ``h2``.

APNs and FCM speak HTTP/2 only, and a mock must be able to do what a general-purpose server
hides: send GOAWAY in the middle of traffic, advertise a stream limit, stall single streams. The
server runs its own event loop in a background thread (:class:`H2ServerThread`), so a test can
drive it from ordinary synchronous code; its handler is an ``async`` function from
:class:`H2Request` to :class:`H2Response`, or raises :class:`SendGoaway`.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    RequestReceived,
    StreamEnded,
    StreamReset,
    WindowUpdated,
)
from h2.exceptions import H2Error
from h2.settings import SettingCodes

__all__ = ["H2Request", "H2Response", "H2ServerThread", "Handler", "SendGoaway"]


@dataclass(frozen=True)
class H2Request:
    """One request as the handler sees it (header names in lower case)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    client_subject: str | None  # RFC 4514 subject of the verified client certificate
    connection: int = 0  # which connection it came on (numbered from 1 per server)


@dataclass(frozen=True)
class H2Response:
    """The handler's answer."""

    status: int
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)


class SendGoaway(Exception):
    """Raised by a handler: answer this stream with GOAWAY (not processed) and close."""


Handler = Callable[[H2Request], Awaitable[H2Response]]


@dataclass
class _Stream:
    headers: dict[str, str]
    body: bytearray = field(default_factory=bytearray)


class _Connection(asyncio.Protocol):
    def __init__(self, server: H2ServerThread) -> None:
        self._server = server
        self._h2 = H2Connection(H2Configuration(client_side=False, header_encoding="utf-8"))
        self._streams: dict[int, _Stream] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._transport: asyncio.Transport | None = None
        self._subject: str | None = None
        self._closing = False
        self._window_opened = asyncio.Event()
        self.number = 0

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        ssl_object = transport.get_extra_info("ssl_object")
        if ssl_object is None or ssl_object.selected_alpn_protocol() != "h2":
            transport.close()  # HTTP/2 only, as APNs and FCM
            return
        der = ssl_object.getpeercert(binary_form=True)
        if der:
            self._subject = x509.load_der_x509_certificate(der).subject.rfc4514_string()
        self._h2.initiate_connection()
        if self._server.max_concurrent_streams is not None:
            self._h2.update_settings(
                {SettingCodes.MAX_CONCURRENT_STREAMS: self._server.max_concurrent_streams}
            )
        self._server.connection_opened(self)
        self._flush()

    def connection_lost(self, exc: Exception | None) -> None:
        self._server.connection_closed(self)
        for task in self._tasks:
            task.cancel()

    def data_received(self, data: bytes) -> None:
        try:
            events = self._h2.receive_data(data)
        except H2Error:
            self._flush()
            self.close()
            return
        for event in events:
            if isinstance(event, RequestReceived):
                self._streams[event.stream_id] = _Stream(dict(event.headers))  # type: ignore[arg-type]
                self._server.stream_opened(len(self._streams))
            elif isinstance(event, DataReceived):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    stream.body += event.data
                self._h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
            elif isinstance(event, StreamEnded):
                stream = self._streams.get(event.stream_id)
                if stream is not None:
                    task = asyncio.ensure_future(self._answer(event.stream_id, stream))
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
            elif isinstance(event, StreamReset):
                self._streams.pop(event.stream_id, None)
            elif isinstance(event, WindowUpdated):
                self._window_opened.set()
            elif isinstance(event, ConnectionTerminated):
                self.close()
        self._flush()

    async def _answer(self, stream_id: int, stream: _Stream) -> None:
        headers = stream.headers
        request = H2Request(
            method=headers.get(":method", ""),
            path=headers.get(":path", ""),
            headers={k: v for k, v in headers.items() if not k.startswith(":")},
            body=bytes(stream.body),
            client_subject=self._subject,
            connection=self.number,
        )
        try:
            response = await self._server.handler(request)
        except SendGoaway:
            self._goaway(stream_id)
            return
        if self._closing or self._streams.pop(stream_id, None) is None:
            return
        out = [(":status", str(response.status)), *response.headers.items()]
        out.append(("content-length", str(len(response.body))))
        try:
            self._h2.send_headers(stream_id, out, end_stream=not response.body)
            self._flush()
            await self._send_body(stream_id, response.body)
        except H2Error:
            return  # the client reset the stream meanwhile

    async def _send_body(self, stream_id: int, body: bytes) -> None:
        """Send ``body`` in frames the peer accepts, waiting for flow-control window."""
        rest = memoryview(body)
        while rest and not self._closing:
            window = self._h2.local_flow_control_window(stream_id)
            if window <= 0:
                self._window_opened.clear()
                await self._window_opened.wait()
                continue
            size = min(window, self._h2.max_outbound_frame_size, len(rest))
            self._h2.send_data(stream_id, bytes(rest[:size]), end_stream=size == len(rest))
            rest = rest[size:]
            self._flush()

    def _goaway(self, stream_id: int) -> None:
        if self._closing:
            return
        # This stream and every later one were not processed: the client may send them again.
        with contextlib.suppress(H2Error):
            self._h2.close_connection(last_stream_id=max(stream_id - 2, 0))
        self._flush()
        self.close()

    def close(self) -> None:
        self._closing = True
        if self._transport is not None:
            self._transport.close()

    def _flush(self) -> None:
        data = self._h2.data_to_send()
        if data and self._transport is not None and not self._transport.is_closing():
            self._transport.write(data)


class H2ServerThread:
    """An HTTP/2 TLS server on loopback, in its own thread and event loop.

    ``client_ca``: client certificates are asked for and verified against it (optional ones:
    the handler sees ``client_subject`` None without). Start with :meth:`start`, stop with
    :meth:`stop` (or use it as a context manager).
    """

    def __init__(
        self,
        handler: Handler,
        *,
        cert: Path,
        key: Path,
        client_ca: Path | None = None,
        max_concurrent_streams: int | None = None,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.handler = handler
        self.max_concurrent_streams = max_concurrent_streams
        self.host = host
        self.port = port
        self._context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._context.load_cert_chain(str(cert), str(key))
        self._context.set_alpn_protocols(["h2"])
        if client_ca is not None:
            self._context.load_verify_locations(cafile=str(client_ca))
            self._context.verify_mode = ssl.CERT_OPTIONAL
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None
        self._connections: set[_Connection] = set()
        self._lock = threading.Lock()
        self.connections_opened = 0
        self.max_streams_seen = 0

    @property
    def url(self) -> str:
        """``https://host:port``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"https://{host}:{self.port}"

    def start(self) -> None:
        """Listen (port 0: on a free one); returns once it accepts connections."""
        self._thread.start()
        future = asyncio.run_coroutine_threadsafe(self._listen(), self._loop)
        future.result(10)

    async def _listen(self) -> None:
        self._server = await self._loop.create_server(
            lambda: _Connection(self), self.host, self.port, ssl=self._context, backlog=512
        )
        self.port = self._server.sockets[0].getsockname()[1]

    def stop(self) -> None:
        """Close every connection and stop the thread."""

        async def close() -> None:
            if self._server is not None:
                self._server.close()
            for connection in list(self._connections):
                connection.close()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        self._loop.close()

    def drop_connections(self) -> None:
        """Close every open connection at once (a connection loss, without GOAWAY)."""

        async def close() -> None:
            for connection in list(self._connections):
                connection.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)

    # --- called from the connections (event loop thread) ------------------------------------

    def connection_opened(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.add(connection)
            self.connections_opened += 1
            connection.number = self.connections_opened

    def connection_closed(self, connection: _Connection) -> None:
        with self._lock:
            self._connections.discard(connection)

    def stream_opened(self, open_streams: int) -> None:
        with self._lock:
            self.max_streams_seen = max(self.max_streams_seen, open_streams)

    @property
    def open_connections(self) -> int:
        """Connections open right now."""
        with self._lock:
            return len(self._connections)
