"""Running the development gateway: in this process (a thread) or as a ``fdpush gateway`` process.

- :func:`build_server` makes the uvicorn server (HTTPS, with client certificates required and
  verified when a client CA is given; plain HTTP without a certificate).
- :class:`GatewayThread` serves a :class:`~fdpush.gateway.core.DevGateway` from a background
  thread, so a test can look at its state directly.
- :class:`GatewayProcess` runs ``fdpush gateway`` as a child process on a free port.

Both are :class:`RunningGateway`: its URL, the ``data.url`` a pusher names
(:attr:`~RunningGateway.push_url`), an HTTP client that trusts the test CA and presents the
client certificate, and the ``/_dev`` API as methods.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx
import uvicorn

from fdpush import heap
from fdpush.gateway.app import PUSH_BASE, create_gateway_app
from fdpush.gateway.certs import TestPki, make_test_pki
from fdpush.gateway.core import DevGateway

__all__ = [
    "GatewayProcess",
    "GatewayThread",
    "RunningGateway",
    "TlsFiles",
    "bind_socket",
    "build_server",
    "check_tls_files",
    "serve",
    "serve_in_thread",
    "stop_process",
]

READY_LINE = re.compile(r"fdpush gateway: listening on (\S+)")
STARTUP_DEADLINE = 30.0
GRACE_SECONDS = 2  # for the requests in flight when the gateway is told to stop


@dataclass(frozen=True)
class TlsFiles:
    """The server's certificate and key, and the CA that client certificates must chain to."""

    cert: Path
    key: Path
    client_ca: Path | None = None  # None: no client certificate asked for


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port`` (port 0: a free one the OS picks)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(128)
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


def build_server(gateway: DevGateway, tls: TlsFiles | None) -> uvicorn.Server:
    """A uvicorn server for ``gateway``; run it with ``server.run(sockets=[bind_socket(...)])``.

    With ``tls.client_ca`` the TLS handshake requires a client certificate issued by that CA
    (a client without one, or with another CA's, never reaches the app).
    """
    options: dict[str, Any] = {}
    if tls is not None:
        options = {"ssl_certfile": str(tls.cert), "ssl_keyfile": str(tls.key)}
        if tls.client_ca is not None:
            options["ssl_ca_certs"] = str(tls.client_ca)
            options["ssl_cert_reqs"] = ssl.CERT_REQUIRED
    config = uvicorn.Config(
        create_gateway_app(gateway),
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan="off",
        timeout_graceful_shutdown=GRACE_SECONDS,
        **options,
    )
    return uvicorn.Server(config)


def stop_process(process: subprocess.Popen[bytes], grace_seconds: float = 10.0) -> None:
    """Terminate ``process`` and wait for it; kill it if it is not gone after the grace."""
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(grace_seconds)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def serve_in_thread(server: uvicorn.Server, sock: socket.socket) -> threading.Thread:
    """Run ``server`` on ``sock`` in a daemon thread; return once it accepts connections.

    Stop it with ``server.should_exit = True`` and a join of the thread. Raises RuntimeError
    (after stopping it) when it does not start within the start-up deadline.
    """
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + STARTUP_DEADLINE
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            thread.join(10)
            raise RuntimeError("the server did not start")
        time.sleep(0.005)
    return thread


def check_tls_files(tls: TlsFiles) -> None:
    """Raise ValueError naming the file when the certificate, key or client CA cannot be used."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"--cert {tls.cert} / --key {tls.key}: {exc}") from None
    if tls.client_ca is not None:
        try:
            context.load_verify_locations(cafile=str(tls.client_ca))
        except (OSError, ssl.SSLError) as exc:
            raise ValueError(f"--client-ca {tls.client_ca}: {exc}") from None


def serve(
    gateway: DevGateway,
    *,
    host: str,
    port: int,
    tls: TlsFiles | None,
    on_listening: Callable[[str], None],
) -> bool:
    """Serve ``gateway`` until SIGINT/SIGTERM; False when the server could not start.

    ``on_listening`` gets the URL (``https://host:port``; the real port when ``port`` is 0)
    once the socket listens. Raises OSError when the address cannot be bound.
    """
    sock = bind_socket(host, port)
    shown_host = f"[{host}]" if ":" in host else host
    on_listening(f"{'https' if tls else 'http'}://{shown_host}:{sock.getsockname()[1]}")
    server = build_server(gateway, tls)
    heap.settle()  # this process serves until it stops (not so serve_in_thread's host)
    try:
        server.run(sockets=[sock])
    finally:
        sock.close()
        gateway.close()
    return server.started


class RunningGateway:
    """A development gateway that answers at :attr:`url`; the ``/_dev`` API as methods."""

    def __init__(self, url: str, pki: TestPki | None) -> None:
        self.url = url
        self.pki = pki
        self._client: httpx.Client | None = None

    @property
    def push_url(self) -> str:
        """The base URL a pusher's ``data.url`` names: ``<url>/push/v1/``."""
        return f"{self.url}{PUSH_BASE}/"

    def client(self, *, with_client_cert: bool = True, timeout: float = 10.0) -> httpx.Client:
        """A new HTTP client for the gateway (trusting the test CA; presenting the client cert)."""
        verify: ssl.SSLContext | bool = True
        if self.pki is not None:
            verify = self.pki.client_ssl_context(with_client_cert=with_client_cert)
        return httpx.Client(base_url=self.url, verify=verify, timeout=timeout)

    @property
    def http(self) -> httpx.Client:
        """A shared client (see :meth:`client`), made on first use, closed by :meth:`stop`."""
        if self._client is None:
            self._client = self.client()
        return self._client

    def _dev(self, method: str, path: str, **kwargs: Any) -> Any:
        try:
            response = self.http.request(method, "/_dev/" + path, **kwargs)
        except httpx.RemoteProtocolError:
            # The server closed the kept-alive connection just as the request went out (its
            # idle timeout): the request was not taken, and every /_dev/ call can be repeated.
            response = self.http.request(method, "/_dev/" + path, **kwargs)
        response.raise_for_status()
        return response.json()

    def inbox(self, app_id: str, pushkey: str, *, since: int = 0) -> list[dict[str, Any]]:
        """The device's notifications (oldest first), as ``GET /_dev/inbox`` shows them."""
        params = {"app_id": app_id, "pushkey": pushkey, "since": since}
        notifications: list[dict[str, Any]] = self._dev("GET", "inbox", params=params)[
            "notifications"
        ]
        return notifications

    def notifications(self, *, since: int = 0, limit: int = 1000) -> dict[str, Any]:
        """``GET /_dev/notifications``: ``{"notifications": [...], "next": cursor}``."""
        page: dict[str, Any] = self._dev(
            "GET", "notifications", params={"since": since, "limit": limit}
        )
        return page

    def clear(self) -> int:
        """Forget every recorded notification; returns how many."""
        deleted: int = self._dev("DELETE", "inbox")["deleted"]
        return deleted

    def trouble(self, **switches: Any) -> dict[str, Any]:
        """``POST /_dev/trouble`` with these switches; returns all switches after the change."""
        current: dict[str, Any] = self._dev("POST", "trouble", json=switches)
        return current

    def reset_trouble(self) -> dict[str, Any]:
        """Every trouble switch off, the start-up limits back."""
        return self.trouble(reset=True)

    def stats(self) -> dict[str, Any]:
        """``GET /_dev/stats``."""
        stats: dict[str, Any] = self._dev("GET", "stats")
        return stats

    def reset_stats(self) -> None:
        """Zero the counters."""
        self._dev("DELETE", "stats")

    def wait_until(
        self, condition: Callable[[], bool], *, timeout: float = 10.0, interval: float = 0.02
    ) -> None:
        """Poll ``condition`` until it holds; TimeoutError after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() > deadline:
                raise TimeoutError(f"condition not met within {timeout}s")
            time.sleep(interval)

    def wait_for_notifications(self, count: int, *, timeout: float = 10.0) -> dict[str, Any]:
        """Wait until ``count`` notifications were recorded in all (since start or reset)."""
        latest: dict[str, Any] = {}

        def enough() -> bool:
            latest.update(self.stats())
            return int(latest["notifications_recorded"]) >= count

        self.wait_until(enough, timeout=timeout)
        return latest

    def _close_client(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None

    def stop(self) -> None:
        """Stop serving (and close the shared client)."""
        self._close_client()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()


class GatewayThread(RunningGateway):
    """Serve a :class:`DevGateway` on loopback from a background thread of this process.

    With ``pki`` it serves HTTPS with the PKI's server certificate and, unless
    ``require_client_cert`` is false, requires a client certificate from the PKI's CA.
    """

    def __init__(
        self,
        gateway: DevGateway | None = None,
        *,
        pki: TestPki | None = None,
        require_client_cert: bool = True,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        """Start serving now; returns once the server accepts connections."""
        self.gateway = gateway if gateway is not None else DevGateway()
        tls = None
        if pki is not None:
            client_ca = pki.ca_cert if require_client_cert else None
            tls = TlsFiles(pki.server_cert, pki.server_key, client_ca)
        self._socket = bind_socket(host, port)
        bound_port = self._socket.getsockname()[1]
        scheme = "https" if tls else "http"
        shown_host = f"[{host}]" if ":" in host else host
        super().__init__(f"{scheme}://{shown_host}:{bound_port}", pki)
        self._server = build_server(self.gateway, tls)
        try:
            self._thread = serve_in_thread(self._server, self._socket)
        except RuntimeError:
            self._socket.close()
            self.gateway.close()
            raise RuntimeError("the development gateway did not start") from None

    def stop(self) -> None:
        """Stop the server, wait for its thread, close the socket and the JSON-lines file.

        Requests in flight are answered first (within the grace period); idle keep-alive
        connections are not waited for: their client (fdpush's pool) does not answer the TLS
        close until it uses the connection again, which held every stop for the whole grace.
        """
        self._close_client()
        server = self._server
        server.should_exit = True
        deadline = time.monotonic() + GRACE_SECONDS
        while self._thread.is_alive() and time.monotonic() < deadline:
            accepting = not server.started or any(s.is_serving() for s in server.servers)
            if not accepting and not server.server_state.tasks:
                break
            time.sleep(0.005)
        server.force_exit = True
        if self._thread.is_alive():
            self._thread.join(10)
        self._socket.close()
        self.gateway.close()


class GatewayProcess(RunningGateway):
    """``fdpush gateway`` as a child process on a free loopback port.

    By default it makes a throwaway PKI in ``workdir`` and serves HTTPS with client
    certificates required (``tls=False``: plain HTTP; ``require_client_cert=False``: HTTPS
    without client certificates). ``args`` are further ``fdpush gateway`` options (trouble
    switches, limits, ``--record``). Output goes to ``workdir/gateway.log`` (:meth:`logs`).
    """

    def __init__(
        self,
        workdir: Path,
        *,
        args: Sequence[str] = (),
        tls: bool = True,
        require_client_cert: bool = True,
        pki: TestPki | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        """Start the process; returns once it answers ``GET /_dev/health``."""
        self._client = None
        workdir = workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
        if tls and pki is None:
            pki = make_test_pki(workdir / "pki")
        command = [sys.executable, "-m", "fdpush", "gateway", "--port", "0"]
        if tls and pki is not None:
            command += ["--cert", str(pki.server_cert.resolve())]
            command += ["--key", str(pki.server_key.resolve())]
            if require_client_cert:
                command += ["--client-ca", str(pki.ca_cert.resolve())]
        command += list(args)
        self.log_path = workdir / "gateway.log"
        self._log = self.log_path.open("wb")
        self.process = subprocess.Popen(  # noqa: S603 - our own command line
            command,
            cwd=workdir,
            env={**os.environ, **(env or {})},
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        super().__init__(self._wait_for_url(), pki if tls else None)
        self._wait_healthy()

    def _wait_for_url(self) -> str:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            match = READY_LINE.search(self.logs())
            if match:
                return match.group(1)
            if self.process.poll() is not None:
                break
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"fdpush gateway did not start:\n{self.logs()}")

    def _wait_healthy(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                break
            try:
                if self.http.get("/_dev/health", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"fdpush gateway did not become healthy:\n{self.logs()}")

    def logs(self) -> str:
        """Everything the process wrote so far."""
        if not self._log.closed:
            self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        """Terminate the process (kill it after 10 s) and close the client."""
        self._close_client()
        stop_process(self.process)
        if not self._log.closed:
            self._log.close()
