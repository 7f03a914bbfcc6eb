"""``fdpush worker``: N delivery processes under one supervisor that can be scraped.

The supervisor starts ``processes`` worker processes (each a :class:`DeliveryWorker` with its
own connections; on PostgreSQL they never claim the same notification), restarts one that dies
(with a growing pause), and serves on ``FDPUSH_WORKER_METRICS_PORT``:

- ``/metrics``: the delivery metrics of all its processes in one scrape (prometheus-client's
  multiprocess mode, in a private directory made and removed by the supervisor);
- ``/health/live``: the supervisor runs;
- ``/health/ready``: every worker process is alive, each has looked for work within the last
  ``_STALL_SECONDS`` (a worker that hangs is not ready), and the database has answered each
  within the last ``_DATABASE_SILENCE_SECONDS``. The processes report both through their
  metrics: the supervisor opens no connection of its own, and imports neither the database
  layer nor the worker's modules (it stays small: one per host).

SIGTERM / SIGINT: the workers finish their in-flight batches (their unsent claims expire and
go to another worker), then the supervisor exits.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import shutil
import signal
import tempfile
import time
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import Any

from fdpush import heap
from fdpush.config import Settings
from fdpush.delivery import DATABASE_METRIC, PROGRESS_METRIC

__all__ = ["run_worker_processes"]

log = logging.getLogger(__name__)

_STALL_SECONDS = 30.0  # a worker looks for work at least every few seconds when idle
_DATABASE_SILENCE_SECONDS = 15.0  # three of a worker's heartbeats (every 5 s) missed
_RESTART_PAUSE_MAX = 30.0


def run_worker_processes(settings: Settings, processes: int, *, master_key: bytes) -> int:
    """Supervise ``processes`` delivery processes until SIGTERM/SIGINT; the exit status."""
    metrics_dir = Path(tempfile.mkdtemp(prefix="fdpush-worker-metrics-"))
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = str(metrics_dir)
    try:
        return asyncio.run(_Supervisor(settings, processes, master_key, metrics_dir).run())
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(metrics_dir, ignore_errors=True)


class _Supervisor:
    def __init__(
        self, settings: Settings, processes: int, master_key: bytes, metrics_dir: Path
    ) -> None:
        self._settings = settings
        self._count = processes
        self._master_key = master_key
        self._metrics_dir = metrics_dir
        self._context = multiprocessing.get_context("spawn")
        self._children: list[BaseProcess | None] = [None] * processes
        self._restarts = [0] * processes
        self._stopping = asyncio.Event()

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stopping.set)
        server = self._metrics_server()
        serving = asyncio.create_task(server.serve())
        await asyncio.sleep(0)
        for slot in range(self._count):
            self._start(slot)
        log.info(
            "supervising %d delivery worker process(es); metrics and health on %s:%d",
            self._count,
            self._settings.worker_metrics_host or self._settings.host,
            self._settings.worker_metrics_port,
        )
        try:
            while not self._stopping.is_set():
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._stopping.wait(), 0.5)
                if server.should_exit and not self._stopping.is_set():
                    log.error("the metrics listener stopped; stopping the workers")
                    self._stopping.set()
                    break
                for slot, child in enumerate(self._children):
                    if child is not None and not child.is_alive() and not self._stopping.is_set():
                        await self._restart(slot, child)
        finally:
            await self._stop_children()
            server.should_exit = True
            with contextlib.suppress(Exception):
                await serving
        return 0 if server.started else 3

    def _start(self, slot: int) -> None:
        child = self._context.Process(
            target=_child_main,
            args=(self._settings, self._master_key),
            name=f"fdpush-worker-{slot}",
            daemon=False,
        )
        child.start()
        self._children[slot] = child
        log.info("delivery worker process %d started (pid %s)", slot, child.pid)

    async def _restart(self, slot: int, child: BaseProcess) -> None:
        from prometheus_client import multiprocess

        if child.pid is not None:
            multiprocess.mark_process_dead(child.pid, str(self._metrics_dir))  # type: ignore[no-untyped-call]
        self._restarts[slot] += 1
        pause = min(_RESTART_PAUSE_MAX, 0.5 * 2 ** min(self._restarts[slot] - 1, 6))
        log.error(
            "delivery worker process %d (pid %s) exited with %s; restarting in %.1fs",
            slot,
            child.pid,
            child.exitcode,
            pause,
        )
        self._children[slot] = None
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), pause)
        if not self._stopping.is_set():
            self._start(slot)

    async def _stop_children(self) -> None:
        alive = [c for c in self._children if c is not None and c.is_alive()]
        for child in alive:
            if child.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(child.pid, signal.SIGTERM)
        deadline = time.monotonic() + self._settings.delivery_lease_seconds + 5
        for child in alive:  # in-flight batches finish; then they exit
            await asyncio.to_thread(child.join, max(0.0, deadline - time.monotonic()))
        for child in alive:
            if child.is_alive():
                log.warning("worker pid %s did not stop in time; killed", child.pid)
                child.kill()
                await asyncio.to_thread(child.join, 5)

    # --- scraping ---------------------------------------------------------------------------

    def _metrics_server(self) -> Any:
        import uvicorn
        from starlette.applications import Starlette
        from starlette.requests import Request
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        async def metrics(_request: Request) -> Response:
            body, content_type = self._scrape()
            return Response(body, media_type=content_type)

        async def live(_request: Request) -> Response:
            return JSONResponse({"status": "ok"})

        async def ready(_request: Request) -> Response:
            problems = self._readiness()
            if problems:
                return JSONResponse({"status": "unavailable", "problems": problems}, 503)
            return JSONResponse({"status": "ok", "processes": self._count})

        app = Starlette(
            routes=[
                Route("/metrics", metrics),
                Route("/health/live", live),
                Route("/health/ready", ready),
            ]
        )
        config = uvicorn.Config(
            app,
            host=self._settings.worker_metrics_host or self._settings.host,
            port=self._settings.worker_metrics_port,
            log_config=None,
            access_log=False,
            server_header=False,
            lifespan="off",
        )

        class _Listener(uvicorn.Server):
            @contextlib.contextmanager
            def capture_signals(self) -> Any:  # the supervisor handles signals
                yield

        return _Listener(config)

    def _scrape(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
        from prometheus_client.multiprocess import MultiProcessCollector

        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]
        return generate_latest(registry), CONTENT_TYPE_LATEST

    def _readiness(self) -> list[str]:
        from prometheus_client import CollectorRegistry
        from prometheus_client.multiprocess import MultiProcessCollector

        problems: list[str] = []
        dead = [i for i, c in enumerate(self._children) if c is None or not c.is_alive()]
        if dead:
            problems.append(f"worker process(es) {dead} not running")
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=str(self._metrics_dir))  # type: ignore[no-untyped-call]
        now = time.time()
        seen: dict[str, dict[str, float]] = {PROGRESS_METRIC: {}, DATABASE_METRIC: {}}
        for family in registry.collect():
            if family.name in seen:
                for sample in family.samples:
                    seen[family.name][sample.labels.get("pid", "?")] = sample.value
        alive_pids = sorted(str(c.pid) for c in self._children if c is not None and c.is_alive())
        for pid in alive_pids:
            last = seen[PROGRESS_METRIC].get(pid)
            if last is not None and now - last > _STALL_SECONDS:
                problems.append(f"worker pid {pid} made no progress for {now - last:.0f}s")
            answered = seen[DATABASE_METRIC].get(pid)
            if answered is None:
                problems.append(f"the database has not answered worker pid {pid} yet")
            elif now - answered > _DATABASE_SILENCE_SECONDS:
                problems.append(
                    f"the database has not answered worker pid {pid} for {now - answered:.0f}s"
                )
        return problems


def _child_main(settings: Settings, master_key: bytes) -> None:
    """One delivery process: a worker on its own connections, until SIGTERM."""
    from fdpush.logs import configure_logging

    configure_logging(settings.log_level, settings.log_format)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the supervisor decides when to stop
    asyncio.run(_child(settings, master_key))


async def _child(settings: Settings, master_key: bytes) -> None:
    from fdpush.services import Services

    # The supervisor prepared the database before it started the workers.
    async with Services.open(
        settings, worker=True, prepare=False, master_key=master_key
    ) as services:
        assert services.worker is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, services.worker.stop)
        heap.settle()
        await services.worker.run()
