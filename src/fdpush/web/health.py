"""Readiness of `fdpush serve`: what an orchestrator and an operator need to know at a glance.

``/health/ready`` names each check and answers 503 when one fails:

- ``database``: it answers a query;
- ``worker`` (when this process runs the delivery worker): it looked for work within
  ``FDPUSH_READY_MAX_WORKER_SILENCE_SECONDS`` (it does so every few seconds when idle; a worker
  stuck on a lock or a dead connection stops doing so);
- ``outbox`` (likewise): the oldest pending notification waited at most
  ``FDPUSH_READY_MAX_PENDING_AGE_SECONDS`` (0 turns this check off).

With ``FDPUSH_SERVE_WORKER=0`` the API's readiness depends on the database only: a gateway in
trouble must not take the API out of its load balancer; ``fdpush worker`` reports delivery.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from fdpush.delivery.worker import DeliveryWorker
from fdpush.storage import outbox
from fdpush.storage.database import Database

__all__ = ["Readiness"]

log = logging.getLogger(__name__)


@dataclass
class Readiness:
    """The checks behind ``/health/ready``."""

    db: Database
    worker: DeliveryWorker | None
    max_pending_age_seconds: float
    max_worker_silence_seconds: float
    clock: Callable[[], float] = time.time
    monotonic: Callable[[], float] = time.monotonic

    async def check(self) -> tuple[bool, dict[str, Any]]:
        """``(ready, body)``: the body names every check, with ``ok`` and what it measured."""
        checks: dict[str, dict[str, Any]] = {}
        try:
            async with self.db.read() as conn:
                oldest = await outbox.oldest_pending(conn) if self.worker is not None else None
            checks["database"] = {"ok": True}
        except Exception as exc:  # noqa: BLE001 - any failure means "not ready"
            log.warning("readiness: the database does not answer (%s)", type(exc).__name__)
            checks["database"] = {"ok": False, "error": type(exc).__name__}
            oldest = None
        if self.worker is not None:
            silence = max(0.0, self.monotonic() - self.worker.last_progress)
            checks["worker"] = {
                "ok": silence <= self.max_worker_silence_seconds,
                "last_progress_seconds_ago": round(silence, 1),
                "max_seconds": self.max_worker_silence_seconds,
            }
            if checks["database"]["ok"]:
                age = 0.0 if oldest is None else max(0.0, self.clock() - oldest / 1000)
                checks["outbox"] = {
                    "ok": self.max_pending_age_seconds <= 0 or age <= self.max_pending_age_seconds,
                    "oldest_pending_age_seconds": round(age, 1),
                    "max_seconds": self.max_pending_age_seconds,
                }
        ready = all(c["ok"] for c in checks.values())
        failing = sorted(name for name, c in checks.items() if not c["ok"])
        if failing:
            log.warning("not ready: %s", ", ".join(failing))
        return ready, {"status": "ok" if ready else "unavailable", "checks": checks}
