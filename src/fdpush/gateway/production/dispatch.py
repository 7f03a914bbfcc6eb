"""Routing, retrying and answering: every push ends accepted, rejected or failed, in bounded time.

- **Routing**: an ``app_id`` names a configured app (``<bundle id>.apns`` → APNs,
  ``<project>.<app>.firebase`` → FCM); an unconfigured app_id fails that push (never rejects it).
- **Rejections**: a pushkey in the :class:`RejectionMemory` is answered rejected without asking
  the provider; a provider's definitive "dead" is remembered.
- **Retrying**: transient failures (429, 5xx, connection loss, timeouts, refused credentials)
  are retried with exponential backoff and jitter, honouring ``Retry-After``; an app-wide
  throttle (FCM ``QUOTA_EXCEEDED``) pauses that app alone. Whatever is not accepted by the
  deadline fails, so the Fachdienst retries — nothing is answered delivered that was not.
- **Limits**: each app has its own connections and a bounded number of concurrent streams (one
  slow app never takes another's); each provider has a bounded queue, and a request that does
  not fit is refused whole with :class:`Overloaded` (503 + ``Retry-After`` to the Fachdienst).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

from fdpush.gateway.production.apns import ApnsSender
from fdpush.gateway.production.config import ApnsApp, GatewayConfig
from fdpush.gateway.production.fcm import FcmSender
from fdpush.gateway.production.metrics import GatewayMetrics
from fdpush.gateway.production.push import Attempt, Provider, Push, Sender
from fdpush.gateway.production.rejections import RejectionMemory
from fdpush.logs import pushkey_ref

__all__ = ["Delivery", "Dispatcher", "Overloaded", "check_credentials"]

log = logging.getLogger("fdpush.gateway.dispatch")

Outcome = Literal["accepted", "rejected", "failed"]
NO_APP_ERROR = "No push credentials configured for this app_id"


@dataclass(frozen=True, slots=True)
class Delivery:
    """How one push ended, as the Fachdienst is told."""

    outcome: Outcome
    error: str | None = None
    transient: bool = False  # failed, but sending it again later may succeed


class Overloaded(Exception):
    """A provider's queue cannot take the request: answer 503 with ``Retry-After``."""

    def __init__(self, provider: Provider, retry_after: int) -> None:
        super().__init__(f"the {provider} queue is full")
        self.provider = provider
        self.retry_after = retry_after


@dataclass
class _Lane:
    """One configured app: its provider client, its stream budget, its pause."""

    app_id: str
    sender: Sender
    streams: asyncio.Semaphore
    paused_until: float = 0.0  # monotonic; the provider throttles the whole app until then
    pause_reason: str = ""


def check_credentials(config: GatewayConfig) -> None:
    """Read every app's key, certificate and service account as the gateway will; raises
    ValueError naming the first one it cannot use (so a bad file stops the start, not a push)."""
    for app in config.apps().values():
        if isinstance(app, ApnsApp):
            ApnsSender.check(app, config.apns)
        else:
            FcmSender.check(app)


class Dispatcher:
    """Delivers pushes for the configured apps. Start it in the serving event loop."""

    def __init__(
        self,
        config: GatewayConfig,
        memory: RejectionMemory,
        metrics: GatewayMetrics,
        *,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._config = config
        self._delivery = config.delivery
        self._memory = memory
        self._metrics = metrics
        self._clock = clock
        self._wall_clock = wall_clock
        # Jitter only: not for secrets.
        self._rng = rng or random.Random()  # noqa: S311
        self._lanes: dict[str, _Lane] = {}
        self._pending: Counter[Provider] = Counter()
        metrics.rejection_memory.set_function(lambda: len(memory))

    async def start(self) -> None:
        """Make every app's provider client (reads the key files; no connection yet)."""
        for app_id, app in self._config.apps().items():
            sender: Sender
            if isinstance(app, ApnsApp):
                settings = self._config.apns
                sender = ApnsSender(
                    app,
                    settings,
                    clock=self._wall_clock,
                    on_token_refresh=self._counter("apns", app_id),
                )
            else:
                settings = self._config.fcm
                sender = FcmSender(
                    app,
                    settings,
                    quota_backoff=self._delivery.quota_backoff_seconds,
                    clock=self._wall_clock,
                    on_token_refresh=self._counter("fcm", app_id),
                )
            self._lanes[app_id] = _Lane(app_id, sender, asyncio.Semaphore(settings.streams_per_app))

    def _counter(self, provider: Provider, app_id: str) -> Callable[[], None]:
        return self._metrics.token_refreshes.labels(provider, app_id).inc

    async def aclose(self) -> None:
        """Close every provider connection."""
        for lane in self._lanes.values():
            await lane.sender.aclose()
        self._lanes.clear()

    async def deliver(self, pushes: Sequence[Push]) -> list[Delivery]:
        """Deliver ``pushes`` (in parallel); one :class:`Delivery` each, in the same order.

        Returns within the configured answer time. Raises :class:`Overloaded` (delivering
        nothing) when a provider's queue cannot take this request's pushes.
        """
        deadline = self._clock() + self._delivery.answer_within_seconds
        wanted: Counter[Provider] = Counter(
            self._lanes[p.app_id].sender.provider for p in pushes if p.app_id in self._lanes
        )
        for provider, count in wanted.items():
            if self._pending[provider] + count > self._delivery.queue_per_provider:
                self._metrics.overloaded.labels(provider).inc()
                raise Overloaded(provider, self._delivery.overload_retry_after_seconds)
        self._queue(wanted, +1)
        try:
            return list(await asyncio.gather(*(self._deliver_one(p, deadline) for p in pushes)))
        finally:
            self._queue(wanted, -1)

    def _queue(self, counts: Counter[Provider], sign: int) -> None:
        for provider, count in counts.items():
            self._pending[provider] += sign * count
            self._metrics.queue_depth.labels(provider).set(self._pending[provider])

    async def _deliver_one(self, push: Push, deadline: float) -> Delivery:
        lane = self._lanes.get(push.app_id)
        provider = lane.sender.provider if lane is not None else "none"
        if self._memory.is_rejected(push.app_id, push.pushkey):
            self._metrics.items.labels(provider, "remembered").inc()
            return Delivery("rejected")
        if lane is None:
            self._metrics.items.labels(provider, "failed").inc()
            log.warning("no app configured", extra={"app_id": push.app_id})
            return Delivery("failed", NO_APP_ERROR)
        retries = 0
        answered: Attempt | None = None  # the provider's latest answer, for the error
        while True:
            now = self._clock()
            if lane.paused_until > now:
                if lane.paused_until >= deadline:
                    wait = lane.paused_until - now
                    error = (
                        f"{provider} throttles this app ({lane.pause_reason}); "
                        f"retry in {wait:.0f} s"
                    )
                    return self._failed(lane, push, error, transient=True)
                await asyncio.sleep(lane.paused_until - now)
                continue
            attempt = await self._attempt(lane, push, deadline - now)
            if attempt.status is not None:
                answered = attempt
            if attempt.kind == "accepted":
                self._metrics.items.labels(provider, "accepted").inc()
                return Delivery("accepted")
            if attempt.kind == "rejected":
                self._memory.remember(push.app_id, push.pushkey)
                self._metrics.items.labels(provider, "rejected").inc()
                log.info(
                    "pushkey rejected by the provider",
                    extra={
                        "app_id": push.app_id,
                        "pushkey": pushkey_ref(push.pushkey),
                        "reason": attempt.describe(),
                    },
                )
                return Delivery("rejected")
            if attempt.kind == "failed":
                return self._failed(lane, push, f"{provider} refused: {attempt.describe()}")
            if attempt.refresh_auth and not lane.sender.auth_refused(attempt):
                error = f"{provider} refused the credentials: {attempt.describe()}"
                return self._failed(lane, push, error, transient=True)
            if attempt.app_wide and attempt.retry_after:
                lane.paused_until = max(lane.paused_until, self._clock() + attempt.retry_after)
                lane.pause_reason = attempt.describe()
            delay = 0.0 if attempt.refresh_auth else self._backoff(retries, attempt.retry_after)
            if self._clock() + delay >= deadline:
                error = (
                    f"{provider} did not accept it within "
                    f"{self._delivery.answer_within_seconds:g} s: {_cause(attempt, answered)}"
                )
                return self._failed(lane, push, error, transient=True)
            self._metrics.retries.labels(provider).inc()
            retries += 1
            await asyncio.sleep(delay)

    async def _attempt(self, lane: _Lane, push: Push, remaining: float) -> Attempt:
        provider = lane.sender.provider
        started = self._clock()
        try:
            async with asyncio.timeout(max(remaining, 0.0)):
                async with lane.streams:
                    started = self._clock()
                    attempt = await lane.sender.send(push)
        except TimeoutError:
            attempt = Attempt("retry", None, "timeout")
        self._metrics.provider_latency.labels(provider).observe(self._clock() - started)
        status = str(attempt.status) if attempt.status is not None else "none"
        self._metrics.provider_answers.labels(provider, status, attempt.reason[:40]).inc()
        return attempt

    def _backoff(self, retries: int, retry_after: float | None) -> float:
        ceiling = min(
            self._delivery.retry_max_seconds, self._delivery.retry_base_seconds * 2.0**retries
        )
        jittered = ceiling / 2 + self._rng.random() * ceiling / 2
        return max(jittered, retry_after or 0.0)

    def _failed(self, lane: _Lane, push: Push, error: str, *, transient: bool = False) -> Delivery:
        self._metrics.items.labels(lane.sender.provider, "failed").inc()
        log.warning(
            "push not delivered",
            extra={"app_id": push.app_id, "pushkey": pushkey_ref(push.pushkey), "error": error},
        )
        return Delivery("failed", error, transient)


def _cause(last: Attempt, answered: Attempt | None) -> str:
    """Why a push ran out of time: the last attempt, or, when that one had no answer (the deadline
    cut it short, or the connection failed), the provider's latest answer before it as well."""
    if last.status is not None or answered is None:
        return last.describe()
    return f"{answered.describe()}, then {last.describe()}"
