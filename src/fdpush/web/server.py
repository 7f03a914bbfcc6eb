"""Running the service: one process, or several API processes sharing one port.

One process (the default) serves the client API (and the internal API, on its own listener
when ``FDPUSH_INTERNAL_PORT`` is set) and runs the delivery worker, on one core.

``serve --workers N`` (``FDPUSH_WORKERS``) runs N such processes, PostgreSQL only. The parent
binds the listening sockets once, applies the migrations once, and starts the processes, which
all accept on the same sockets; it restarts a process that dies and stops them all on SIGTERM
or SIGINT. Each process runs its own delivery worker (unless ``FDPUSH_SERVE_WORKER=0``): the
workers share the outbox safely, as separate ``fdpush worker`` processes do. Metrics go through
prometheus-client's multiprocess mode into a private directory the parent makes and removes, so
one scrape of ``/metrics`` on any process covers all of them.

SQLite has one writer at a time: several processes would queue on its file lock (and their
delivery workers would not wake each other), so with SQLite ``--workers`` above 1 is refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import ssl
import tempfile
from collections.abc import Iterator
from multiprocessing.connection import wait
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any, Literal

import uvicorn

from fdpush.config import Settings
from fdpush.logs import configure_logging
from fdpush.web.peer_cert import client_cert_protocol
from fdpush.web.protocol import http_protocol

__all__ = ["EXIT_NOT_STARTED", "ListenError", "bind_listeners", "serve", "serve_processes"]

log = logging.getLogger(__name__)

EXIT_NOT_STARTED = 3  # a process could not start serving (the parent then stops)
_METRICS_DIR_VARIABLE = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it


def serve(
    settings: Settings,
    *,
    host: str,
    port: int,
    access_log: bool,
    sockets: tuple[socket.socket, socket.socket | None] | None = None,
    metrics_dir: Path | None = None,
) -> bool:
    """Serve in this process until SIGTERM or SIGINT; whether the service started.

    ``sockets``: the already bound client-API and internal-API sockets (``serve_processes``);
    otherwise uvicorn binds ``host``:``port`` (and the internal port) itself.
    """
    from fdpush.web.app import create_app, create_internal_app

    app = create_app(settings, access_log=access_log, metrics_dir=metrics_dir)
    client = _server(settings, app, host, port, lifespan="on", tls=_client_tls(settings))
    if settings.auth_mode == "zeta":
        # The PEP is trusted by its own address (FDPUSH_AUTH_ZETA_TRUSTED_PROXIES): the peer
        # must not be replaced by what an X-Forwarded-For header claims.
        client.config.proxy_headers = False
    servers = [(client, None if sockets is None else sockets[0])]
    if settings.internal_port is not None:
        internal = create_internal_app(app, settings, access_log=access_log)
        servers.append(
            (
                _second_server(
                    settings,
                    internal,
                    settings.internal_host or settings.host,
                    settings.internal_port,
                    tls=_internal_tls(settings),
                ),
                None if sockets is None else sockets[1],
            )
        )
    for server, sock in servers:
        if sock is not None:  # uvicorn names only the addresses it binds itself
            scheme = "https" if server.config.ssl_certfile else "http"
            address = sock.getsockname()
            log.info("listening on %s://%s:%d", scheme, address[0], address[1])
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve_all(servers))
    return bool(servers[0][0].started)


def _config(
    settings: Settings,
    app: Any,
    host: str,
    port: int,
    lifespan: Literal["on", "off"],
    tls: dict[str, Any] | None = None,
) -> uvicorn.Config:
    tls = dict(tls or {})
    http, bounds = http_protocol(settings.max_header_bytes, settings.max_header_fields)
    if tls.pop("peer_cert", False):  # the request head stays bounded on this listener too
        http = client_cert_protocol(http if isinstance(http, type) else None)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,
        access_log=False,
        server_header=False,
        lifespan=lifespan,
        http=http,
        **bounds,
        **tls,
    )


def _client_tls(settings: Settings) -> dict[str, Any] | None:
    """uvicorn's settings for mutual TLS on the client listener, when configured."""
    if not settings.client_tls():
        return None
    return _mutual_tls(settings.tls_cert, settings.tls_key, settings.tls_client_ca)


def _internal_tls(settings: Settings) -> dict[str, Any] | None:
    """uvicorn's settings for mutual TLS on the internal listener, when configured (the peer's
    certificate names the technical user)."""
    if not settings.internal_tls():
        return None
    return {
        **_mutual_tls(
            settings.internal_tls_cert, settings.internal_tls_key, settings.internal_tls_client_ca
        ),
        "peer_cert": True,
    }


def _mutual_tls(cert: Any, key: Any, client_ca: Any) -> dict[str, Any]:
    return {
        "ssl_certfile": str(cert),
        "ssl_keyfile": str(key),
        "ssl_ca_certs": str(client_ca),
        "ssl_cert_reqs": ssl.CERT_REQUIRED,
    }


def _server(
    settings: Settings,
    app: Any,
    host: str,
    port: int,
    *,
    lifespan: Literal["on", "off"],
    tls: dict[str, Any] | None = None,
) -> uvicorn.Server:
    return uvicorn.Server(_config(settings, app, host, port, lifespan, tls))


def _second_server(
    settings: Settings, app: Any, host: str, port: int, *, tls: dict[str, Any] | None = None
) -> uvicorn.Server:
    """A listener that leaves signal handling to the first one, which stops it."""

    class SecondServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            yield

    return SecondServer(_config(settings, app, host, port, "off", tls))


async def _serve_all(servers: list[tuple[uvicorn.Server, socket.socket | None]]) -> None:
    (first, first_socket), *others = servers
    tasks = [
        asyncio.create_task(s.serve(sockets=None if sock is None else [sock])) for s, sock in others
    ]
    try:
        await first.serve(sockets=None if first_socket is None else [first_socket])
    finally:
        for server, _ in others:
            server.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


def _loop_factory() -> Any:
    """uvloop's event loop where it is installed (with uvicorn[standard], except on Windows)."""
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


# --- several processes -------------------------------------------------------------------------


Listeners = tuple[socket.socket, socket.socket | None]


class ListenError(Exception):
    """A port the service is configured to listen on cannot be bound (in use, no permission)."""


def bind_listeners(settings: Settings, host: str, port: int) -> Listeners:
    """The client-API socket (and the internal API's, when it has a port of its own), bound
    before anything else starts: a busy port is one clear line at once, not a failure after
    the migrations and the worker's start."""
    wanted = [(host, port, "FDPUSH_PORT")]
    if settings.internal_port is not None:
        wanted.append(
            (
                settings.internal_host or settings.host,
                settings.internal_port,
                "FDPUSH_INTERNAL_PORT",
            )
        )
    bound: list[socket.socket] = []
    for where, number, setting in wanted:
        try:
            bound.append(_bind(where, number))
        except OSError as exc:
            for sock in bound:
                sock.close()
            reason = exc.strerror or str(exc)
            raise ListenError(f"cannot listen on {where}:{number} ({setting}): {reason}") from None
    return bound[0], (bound[1] if len(bound) > 1 else None)


def _bind(host: str, port: int) -> socket.socket:
    """A bound socket the processes share (each one listens and accepts on it)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _process_main(
    settings: Settings,
    index: int,
    sockets: tuple[socket.socket, socket.socket | None],
    host: str,
    access_log: bool,
    metrics_dir: Path,
) -> None:
    """One API process (started with ``spawn``: a fresh interpreter, settings passed in)."""
    configure_logging(settings.log_level, settings.log_format)
    port = sockets[0].getsockname()[1]
    try:
        started = serve(
            settings,
            host=host,
            port=port,
            access_log=access_log,
            sockets=sockets,
            metrics_dir=metrics_dir,
        )
    except Exception:
        logging.getLogger(__name__).exception("API process %d failed", index)
        started = False
    if not started:
        raise SystemExit(EXIT_NOT_STARTED)


class _Supervisor:
    """Starts the API processes, restarts one that dies, stops them all on a signal."""

    def __init__(self, start: Any, count: int) -> None:
        self._start = start
        self._processes: list[BaseProcess] = [start(k) for k in range(count)]
        self._stopping = False

    def stop(self, *_args: Any) -> None:
        self._stopping = True
        for process in self._processes:
            if process.is_alive() and process.pid is not None:
                os.kill(process.pid, signal.SIGTERM)

    def run(self) -> int:
        from prometheus_client import multiprocess

        exit_code = 0
        while any(p.is_alive() for p in self._processes):
            wait([p.sentinel for p in self._processes if p.is_alive()])
            for k, process in enumerate(self._processes):
                if process.is_alive() or process.exitcode is None:
                    continue
                process.join()
                if process.pid is not None:
                    multiprocess.mark_process_dead(process.pid)  # type: ignore[no-untyped-call]
                if self._stopping:
                    continue
                if process.exitcode == EXIT_NOT_STARTED:
                    log.error("API process %d could not start; stopping the others", k)
                    exit_code = EXIT_NOT_STARTED
                    self.stop()
                    continue
                log.warning("API process %d exited (%s); starting it again", k, process.exitcode)
                self._processes[k] = self._start(k)
        return exit_code


def serve_processes(
    settings: Settings,
    *,
    workers: int,
    host: str,
    access_log: bool,
    sockets: Listeners,
) -> int:
    """Run ``workers`` API processes on the ``sockets`` (:func:`bind_listeners`) until SIGTERM
    or SIGINT; the exit status."""
    bound = sockets[0].getsockname()
    log.info("fdpush: %d API processes on http://%s:%d", workers, bound[0], bound[1])
    # The processes apply no migrations: done here once (see ``serve`` in the command line).
    process_settings = settings.model_copy(update={"migrate_on_start": False})
    metrics_dir = Path(tempfile.mkdtemp(prefix="fdpush-metrics-"))
    previous = os.environ.get(_METRICS_DIR_VARIABLE)
    os.environ[_METRICS_DIR_VARIABLE] = str(metrics_dir)  # inherited by the spawned processes
    context = multiprocessing.get_context("spawn")

    def start(index: int) -> BaseProcess:
        process = context.Process(
            target=_process_main,
            args=(process_settings, index, sockets, host, access_log, metrics_dir),
            name=f"fdpush-api-{index}",
        )
        process.start()
        return process

    handlers = {}
    try:
        supervisor = _Supervisor(start, workers)
        for sig in (signal.SIGTERM, signal.SIGINT):
            handlers[sig] = signal.signal(sig, supervisor.stop)
        return supervisor.run()
    finally:
        for sig, handler in handlers.items():
            signal.signal(sig, handler)
        for sock in sockets:
            if sock is not None:
                sock.close()
        if previous is None:
            os.environ.pop(_METRICS_DIR_VARIABLE, None)
        else:
            os.environ[_METRICS_DIR_VARIABLE] = previous
        shutil.rmtree(metrics_dir, ignore_errors=True)
