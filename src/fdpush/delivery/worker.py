"""The delivery worker: claims due notifications, sends them in batches, records what happened.

- Claims carry a short lease that this worker renews while it works; a worker that dies leaves
  leases that run out within ``FDPUSH_DELIVERY_LEASE_SECONDS``, and any worker takes the work
  again (at-least-once). PostgreSQL workers claim with ``FOR UPDATE SKIP LOCKED`` and never
  claim the same row; SQLite has one worker.
- Each gateway has its own circuit, batch size and in-flight cap: a failing or slow gateway
  backs off alone while the others keep flowing.
- It sleeps until woken (a new event in this process, or PostgreSQL ``NOTIFY`` from another),
  until the next retry is due, or at most a few seconds as a safety net.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import socket
import time
import uuid
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from fdpush.delivery import DATABASE_METRIC, PROGRESS_METRIC
from fdpush.delivery.circuit import Circuits
from fdpush.delivery.compose import Ready, compose
from fdpush.delivery.gateway import BatchOutcome, GatewayClient
from fdpush.domain.events import NOTIFY_CHANNEL
from fdpush.domain.keys import BERLIN, Advance, KeyVault, advance, current_period
from fdpush.domain.pushers import user_lock
from fdpush.domain.rejections import forget_rejected_pushkey
from fdpush.logs import in_message
from fdpush.storage import outbox
from fdpush.storage.database import Database

__all__ = ["DeliveryMetrics", "DeliveryWorker", "WorkerOptions"]

log = logging.getLogger(__name__)

_IDLE_POLL_SECONDS = 5.0
_QUEUE_WATCH_SECONDS = 5.0  # also the heartbeat of DATABASE_METRIC
_MIN_WAIT_SECONDS = 0.05
_ITEM_BACKOFF_BASE = 2.0
_ITEM_BACKOFF_MAX = 3600.0
# Released because the gateway is in trouble: sent at once when it recovers (outbox.resume).
TROUBLE_PREFIX = "gateway trouble: "


@dataclass(frozen=True, slots=True)
class WorkerOptions:
    batch_size: int = 100
    concurrency_per_gateway: int = 4
    max_age_seconds: float = 12 * 3600
    lease_seconds: float = 10.0
    claim_limit: int = 1000
    history_days: int = 0
    outbox_retention_days: int = 7
    # The spec's minimum a gateway must accept per request is 256 KB: stay under it.
    max_request_bytes: int = 250_000
    prune_interval_seconds: float = 60.0


class DeliveryMetrics:
    """The delivery metrics of one process, in the given registry."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self.outcomes = Counter(
            "fdpush_notifications",
            "Notifications by outcome: delivered, rejected, failed (gave up), retried",
            ["outcome"],
            registry=registry,
        )
        self.batch_size = Histogram(
            "fdpush_gateway_batch_size",
            "Notifications per gateway request",
            registry=registry,
            buckets=(1, 2, 5, 10, 20, 50, 100),
        )
        self.latency = Histogram(
            "fdpush_gateway_request_duration_seconds",
            "Gateway request latency",
            ["gateway"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
        )
        self.responses = Counter(
            "fdpush_gateway_responses",
            "Gateway answers by HTTP status ('none' when there was no answer)",
            ["gateway", "status"],
            registry=registry,
        )
        # With several processes (prometheus-client's multiprocess mode) a gauge shows the
        # largest value of the live processes; each process reports its own progress.
        self.pending = Gauge(
            "fdpush_outbox_pending",
            "Notifications waiting to be delivered",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.oldest_age = Gauge(
            "fdpush_outbox_oldest_pending_age_seconds",
            "Age of the oldest pending notification",
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.circuit_open = Gauge(
            "fdpush_gateway_circuit_open",
            "1 while a gateway's circuit is open (backing off), 0 when closed",
            ["gateway"],
            registry=registry,
            multiprocess_mode="livemax",
        )
        self.claims = Counter(
            "fdpush_delivery_claims",
            "Claims of due notifications by what they found: rows, or nothing",
            ["found"],
            registry=registry,
        )
        self.progress = Gauge(
            PROGRESS_METRIC,
            "When this worker process last looked for work (Unix time)",
            registry=registry,
            multiprocess_mode="liveall",
        )
        self.database_answer = Gauge(
            DATABASE_METRIC,
            "When the database last answered this worker process (Unix time)",
            registry=registry,
            multiprocess_mode="liveall",
        )


def _gateway_label(base_url: str) -> str:
    """host:port of a gateway base URL: bounded by the allow-list, and no path noise."""
    rest = base_url.split("://", 1)[-1]
    return rest.split("/", 1)[0]


def _log_batch(gateway: str, count: int, status: int | None, seconds: float) -> None:
    """One line per gateway request: which gateway (host:port), how many, its answer, how long.
    Never what was sent: pushkeys and payloads stay out of the log."""
    duration_ms = round(seconds * 1000.0, 1)
    log.info(
        "gateway %s: %d notifications, HTTP %s, %.1fms",
        gateway,
        count,
        status or "none",
        duration_ms,
        extra=in_message(gateway=gateway, count=count, status=status, duration_ms=duration_ms),
    )


class DeliveryWorker:
    """Delivers the outbox until stopped."""

    def __init__(
        self,
        db: Database,
        vault: KeyVault,
        client: GatewayClient,
        *,
        options: WorkerOptions,
        gateway_refusal: Callable[[str], str | None] = lambda _url: None,
        metrics: DeliveryMetrics | None = None,
        listen_url: str | None = None,
        clock: Callable[[], float] = time.time,
        rng: random.Random | None = None,
    ) -> None:
        self._db = db
        self._vault = vault
        self._client = client
        self._options = options
        self._gateway_refusal = gateway_refusal
        self._metrics = metrics
        self._listen_url = listen_url
        self._clock = clock
        self._rng = rng or random.Random()  # noqa: S311 - retry jitter, not cryptography
        self.worker_id = f"{socket.gethostname()[:24]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        self._circuits = Circuits()
        self._batch_size: dict[str, int] = {}
        self._semaphores: dict[str, asyncio.Semaphore] = {}
        self._in_flight: dict[str, set[str]] = defaultdict(set)
        # The claimed dispatches: the ids of each not yet ended or given back (committed).
        self._claimed: dict[int, set[str]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._wake = asyncio.Event()
        self._stopping = False
        self._per_gateway_cap = options.batch_size * options.concurrency_per_gateway * 2
        self.last_progress = time.monotonic()  # for health: when the worker last did its round

    # --- control ------------------------------------------------------------------------------

    def wake(self) -> None:
        """New work may be due (called by the event API in this process)."""
        self._wake.set()

    def stop(self) -> None:
        self._stopping = True
        self._wake.set()

    async def run(self) -> None:
        """Work until :meth:`stop`; in-flight batches finish, unsent claims are left to expire."""
        helpers = [
            asyncio.create_task(self._renew_leases()),
            asyncio.create_task(self._prune()),
        ]
        if self._metrics is not None:
            helpers.append(asyncio.create_task(self._watch_queue()))
        if self._listen_url is not None:
            helpers.append(asyncio.create_task(self._listen()))
        log.info("delivery worker %s started", self.worker_id)
        try:
            while not self._stopping:
                # Cleared before looking for work, so a wake-up during the look is not lost.
                self._wake.clear()
                try:
                    claimed = await self._claim()
                    if claimed is not None:
                        await self._send_claimed(claimed)
                except Exception:
                    log.exception("claiming or preparing notifications failed; retrying shortly")
                    claimed = None
                    await asyncio.sleep(1.0)
                if claimed is not None and claimed.leased.full:
                    continue  # more may be due
                # Nothing due, or every due dispatch it could lease was leased: claiming again
                # at once would find nothing. New work, a send that frees room, or rows given
                # back wake the loop; the next retry's time bounds the wait.
                await self._idle()
            if self._tasks:
                await asyncio.wait(self._tasks, timeout=self._options.lease_seconds)
        finally:
            for task in helpers:
                task.cancel()
            for task in helpers:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            log.info("delivery worker %s stopped", self.worker_id)

    # --- claiming ---------------------------------------------------------------------------

    def _busy_gateways(self) -> list[str]:
        full = [gw for gw, ids in self._in_flight.items() if len(ids) >= self._per_gateway_cap]
        return sorted(set(full) | set(self._circuits.blocked()))

    def _claim_budget(self) -> int:
        """How many rows a claim may take now: what the cap on rows in flight leaves."""
        in_flight = sum(len(ids) for ids in self._in_flight.values())
        return min(self._options.claim_limit, self._per_gateway_cap * 8 - in_flight)

    async def _claim(self) -> _Claim | None:
        """Lease due rows, with what sending them needs (None: nothing is due)."""
        self.last_progress = time.monotonic()
        if self._metrics is not None:
            self._metrics.progress.set(self._clock())
        limit = self._claim_budget()
        if limit <= 0:
            return None
        now = self._clock()
        leased = await outbox.claim_with_context(
            self._db,
            owner=self.worker_id,
            now_ms=int(now * 1000),
            lease_ms=int(self._options.lease_seconds * 1000),
            limit=limit,
            skip_gateways=self._busy_gateways(),
        )
        if self._metrics is not None:
            self._metrics.claims.labels("rows" if leased.rows else "nothing").inc()
        if not leased.rows:
            return None
        for row in leased.rows:
            self._claimed.setdefault(row.dispatch, set()).add(row.id)
        return _Claim(leased, current_period(datetime.fromtimestamp(now, BERLIN)))

    async def _send_claimed(self, claimed: _Claim) -> None:
        """Seal and send what was claimed a gateway request's worth at a time, letting the
        gateways' answers and their settling in between: sealing a whole claim at once kept
        the event loop from them, and left the gateway and the database idle meanwhile."""
        leased = claimed.leased
        for rows in _per_request(leased.rows, self._options.batch_size):
            ready = await self._prepare(rows, leased.targets, leased.bodies, claimed.period)
            if ready:
                self._dispatch(ready)
            await asyncio.sleep(0)

    async def _prepare(
        self,
        rows: Sequence[outbox.Claimed],
        targets: Mapping[int, outbox.Target],
        bodies: Mapping[str, outbox.EventBody],
        period: str,
    ) -> list[Ready]:
        """Make claimed rows ready to send; rows that cannot be sent end here."""
        composed = compose(
            rows,
            targets,
            bodies,
            vault=self._vault,
            period=period,
            gateway_refusal=self._gateway_refusal,
        )
        if composed.key_changes:
            # A new month: the ratcheted keys are persisted before anything sealed with them
            # goes, then those rows are composed again from what is stored now.
            changed = {pusher_id for pusher_id, _, _ in composed.key_changes}
            await self._persist_ratchets(composed.key_changes, period)
            again = [r.row for r in composed.ready if r.row.pusher_id in changed]
            async with self._db.read() as conn:
                targets, bodies = await outbox.sending_context(
                    conn, changed, (r.event_id for r in again)
                )
            fresh = compose(
                again,
                targets,
                bodies,
                vault=self._vault,
                period=period,
                gateway_refusal=self._gateway_refusal,
            )
            unsettled = {pusher_id for pusher_id, _, _ in fresh.key_changes}
            composed.ready = [r for r in composed.ready if r.row.pusher_id not in changed] + [
                r for r in fresh.ready if r.row.pusher_id not in unsettled
            ]
            composed.failed.update(fresh.failed)
            composed.unreadable += fresh.unreadable
            if unsettled:  # keys replaced meanwhile (a new registration): try again shortly
                await self._release(
                    [r.row for r in fresh.ready if r.row.pusher_id in unsettled],
                    delay=1.0,
                    error="key schedule changed while sending",
                    count=False,
                )
        if composed.failed:
            log.error(
                "%d notifications cannot be sent: %s",
                len(composed.failed),
                "; ".join(sorted(set(composed.failed.values()))),
            )
            ended = [r for r in rows if r.id in composed.failed]
            keeps = self._keeps(ended)
            async with self._db.write() as conn:
                await outbox.finish_each(
                    conn, composed.failed, status="failed", now_ms=int(self._clock() * 1000)
                )
                await outbox.drop_dispatches(conn, _emptied(keeps))
            await self._forget(ended, keeps)
            if self._metrics is not None:
                self._metrics.outcomes.labels("failed").inc(len(composed.failed))
        if composed.unreadable:
            # Not lost: kept pending with the reason, while the rest goes.
            log.error(
                "%d stored notifications cannot be opened (another master key?)",
                len(composed.unreadable),
            )
            await self._release(
                composed.unreadable, delay=300.0, error="stored data cannot be opened", count=True
            )
        return composed.ready

    async def _persist_ratchets(
        self, changes: Sequence[tuple[int, str, Advance]], period: str
    ) -> None:
        """Persist new key generations, under the users' locks (registration takes them too),
        advancing from what is stored now."""
        users = sorted({user_id for _, user_id, _ in changes})
        async with self._db.write(*(user_lock(u) for u in users)) as conn:
            targets, _ = await outbox.sending_context(conn, [p for p, _, _ in changes], ())
            added: list[tuple[int, str, bytes]] = []
            removed: list[tuple[int, str]] = []
            for target in targets.values():
                step = advance(
                    self._vault,
                    (target.user_id, target.app_id, target.pushkey),
                    target.generations,
                    period,
                )
                if step is not None:
                    added += [(target.pusher_id, p, m) for p, m in step.added]
                    removed += [(target.pusher_id, p) for p in step.removed]
            await outbox.save_generations(conn, added, removed)

    async def _idle(self) -> None:
        """Wait until work may be due: woken by new work, rows given back or a finished send
        that held the loop back, or at the time the earliest waiting dispatch is due, or a
        closed circuit reopens. Woken already (while it worked): at once."""
        if self._wake.is_set():
            return  # woken while it worked: new work or room, claim at once
        timeout = _IDLE_POLL_SECONDS
        due = None
        # With the cap on rows in flight reached, a send in flight wakes the loop when it ends:
        # asking the database when the next dispatch is due would not change that.
        if self._claim_budget() > 0:
            with contextlib.suppress(Exception):
                due = await outbox.next_due(self._db, int(self._clock() * 1000))
        if due is not None:
            timeout = min(timeout, max(due / 1000 - self._clock(), _MIN_WAIT_SECONDS))
        blocked = [self._circuits.get(gw).reopens_in() for gw in self._circuits.blocked()]
        if blocked:
            timeout = min(timeout, max(min(blocked), _MIN_WAIT_SECONDS))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    # --- sending ------------------------------------------------------------------------------

    def _dispatch(self, ready: Sequence[Ready]) -> None:
        by_gateway: dict[tuple[str, bool], list[Ready]] = defaultdict(list)
        for r in ready:
            by_gateway[(r.row.gateway, r.item.encrypted)].append(r)
        for (gateway, _), items in by_gateway.items():
            size = self._batch_size.get(gateway, self._options.batch_size)
            for batch in _batches(items, size, self._options.max_request_bytes):
                self._in_flight[gateway].update(r.row.id for r in batch)
                task = asyncio.create_task(self._send(gateway, batch))
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)

    async def _send(self, gateway: str, batch: list[Ready]) -> None:
        label = _gateway_label(gateway)
        rows = [r.row for r in batch]
        try:
            semaphore = self._semaphores.setdefault(
                gateway, asyncio.Semaphore(self._options.concurrency_per_gateway)
            )
            async with semaphore:
                circuit = self._circuits.get(gateway)
                if not circuit.allows():
                    await self._release(
                        rows,
                        delay=circuit.reopens_in(),
                        error=TROUBLE_PREFIX + "waiting for the gateway to recover",
                        count=False,
                    )
                    if circuit.state == "closed":
                        # The probe succeeded while these were given back: its resume may have
                        # run before they were, so they are resumed here.
                        await self._resume(gateway)
                    return
                started = time.perf_counter()
                outcome = await self._client.send(gateway, [r.item for r in batch])
                elapsed = time.perf_counter() - started
            # Recorded outside the gateway's slot: the next request goes while this one's
            # verdicts are written (the in-flight cap still bounds what is claimed).
            _log_batch(label, len(batch), outcome.status_code, elapsed)
            if self._metrics is not None:
                self._metrics.latency.labels(label).observe(elapsed)
                self._metrics.batch_size.observe(len(batch))
                self._metrics.responses.labels(label, str(outcome.status_code or "none")).inc()
            await self._record(gateway, batch, outcome)
        except Exception:
            log.exception("sending a batch to %s failed unexpectedly", label)
            with contextlib.suppress(Exception):
                await self._release(rows, delay=30.0, error="internal error", count=True)
        finally:
            # Wake the loop only if this send held it back: its gateway was skipped (full) or
            # the cap on rows in flight was reached. Rows given back wake it in _release.
            held_back = (
                len(self._in_flight[gateway]) >= self._per_gateway_cap or self._claim_budget() <= 0
            )
            self._in_flight[gateway].difference_update(r.id for r in rows)
            if held_back:
                self._wake.set()

    async def _record(self, gateway: str, batch: list[Ready], outcome: BatchOutcome) -> None:
        """Apply a gateway's verdicts; items without one go back, after a backoff."""
        circuit = self._circuits.get(gateway)
        label = _gateway_label(gateway)
        if outcome.max_batch_size is not None:
            smaller = max(1, min(outcome.max_batch_size, len(batch) - 1 or 1))
            self._batch_size[gateway] = smaller
            log.warning("gateway %s takes at most %d per batch; resending smaller", label, smaller)
        recovered = False
        if outcome.gateway_trouble is None:
            recovered = circuit.state != "closed" or circuit.failures > 0
            circuit.record_success()
        if self._metrics is not None:
            self._metrics.circuit_open.labels(label).set(0 if circuit.state == "closed" else 1)
        delivered: list[str] = []
        rejected: list[str] = []
        failed: dict[str, str] = {}
        unanswered: list[outbox.Claimed] = []
        dead_pushkeys: set[str] = set()
        for ready in batch:
            row = ready.row
            result = outcome.results.get(row.id)
            if result is None or result.outcome == "retry":
                unanswered.append(row)
            elif result.outcome == "delivered":
                delivered.append(row.id)
            elif result.outcome == "rejected":
                dead_pushkeys.update(result.rejected_pushkeys)
                if ready.pushkey in result.rejected_pushkeys:
                    rejected.append(row.id)
                else:
                    unanswered.append(row)
            else:
                failed[row.id] = result.error or "refused by the gateway"
        for pushkey in sorted(dead_pushkeys):
            rejected.extend(await forget_rejected_pushkey(self._db, self._vault, gateway, pushkey))
        now_ms = int(self._clock() * 1000)
        ended_ids = set(delivered) | set(rejected) | set(failed)
        ended = [r.row for r in batch if r.row.id in ended_ids]
        keeps = self._keeps(ended)
        await outbox.settle(
            self._db,
            [(i, "delivered", None) for i in delivered]
            + [(i, "rejected", "rejected") for i in sorted(set(rejected))]
            + [(i, "failed", reason) for i, reason in failed.items()],
            now_ms=now_ms,
            done=_emptied(keeps),
        )
        await self._forget(ended, keeps)
        if recovered:
            resumed = await self._resume(gateway)
            log.info("gateway %s recovered; sending its %d waiting notifications", label, resumed)
        if self._metrics is not None:
            self._metrics.outcomes.labels("delivered").inc(len(delivered))
            self._metrics.outcomes.labels("rejected").inc(len(set(rejected)))
            self._metrics.outcomes.labels("failed").inc(len(failed))
        if not unanswered:
            return
        if outcome.gateway_trouble is not None:
            delay = circuit.record_trouble(outcome.retry_after_seconds)
            if self._metrics is not None:
                self._metrics.circuit_open.labels(label).set(1)
            log.warning("gateway %s: %s; backing off %.1fs", label, outcome.gateway_trouble, delay)
            await self._release(
                unanswered, delay=delay, error=TROUBLE_PREFIX + outcome.gateway_trouble, count=True
            )
        elif outcome.max_batch_size is not None:  # our batch was too big: resend at once, smaller
            await self._release(unanswered, delay=0.0, error=None, count=False)
        else:
            attempts = max(r.attempts for r in unanswered)
            delay = min(_ITEM_BACKOFF_MAX, _ITEM_BACKOFF_BASE * 2**attempts)
            delay *= 0.5 + self._rng.random()
            await self._release(
                unanswered, delay=delay, error="gateway could not deliver", count=True
            )

    async def _resume(self, gateway: str) -> int:
        """Make what waits for a recovered gateway due now; how many."""
        async with self._db.write() as conn:
            resumed = await outbox.resume(
                conn, gateway, TROUBLE_PREFIX, now_ms=int(self._clock() * 1000)
            )
        self._wake.set()
        return resumed

    async def _release(
        self, rows: Sequence[outbox.Claimed], *, delay: float, error: str | None, count: bool
    ) -> None:
        """Give rows back for later; rows past the maximum age fail instead (never silently)."""
        now = self._clock()
        now_ms = int(now * 1000)
        too_old = [
            r for r in rows if count and now - r.created_at / 1000 >= self._options.max_age_seconds
        ]
        again = [r for r in rows if r not in too_old]
        keeps = self._keeps(rows)
        async with self._db.write() as conn:
            if too_old:
                age = f"{self._options.max_age_seconds:.0f}s"
                reason = f"gave up after {age}: {error or 'undeliverable'}"
                await outbox.finish(
                    conn, [r.id for r in too_old], status="failed", now_ms=now_ms, error=reason
                )
            await outbox.release(
                conn,
                again,
                next_attempt_at=now_ms + int(delay * 1000),
                error=error,
                count_attempt=count,
                remaining=keeps,
            )
        await self._forget(rows, keeps)
        if self._metrics is not None:
            self._metrics.outcomes.labels("failed").inc(len(too_old))
            if count:
                self._metrics.outcomes.labels("retried").inc(len(again))
        if too_old:
            log.error("gave up on %d notifications: %s", len(too_old), error or "undeliverable")
        self._wake.set()  # a new due time: the loop's wait is measured again

    def _keeps(self, rows: Sequence[outbox.Claimed]) -> dict[int, set[str]]:
        """What each dispatch of ``rows`` still holds claimed once they end or go back; an empty
        set: the dispatch can go with them."""
        leaving: dict[int, set[str]] = defaultdict(set)
        for row in rows:
            leaving[row.dispatch].add(row.id)
        return {d: self._claimed.get(d, set()) - ids for d, ids in leaving.items()}

    async def _forget(self, rows: Sequence[outbox.Claimed], keeps: dict[int, set[str]]) -> None:
        """``rows`` ended or went back (committed). A dispatch that two batches emptied at once
        (neither knew the other's ids were gone) is deleted here."""
        for row in rows:
            left = self._claimed.get(row.dispatch)
            if left is not None:
                left.discard(row.id)
        emptied = []
        for dispatch, kept in keeps.items():
            if not self._claimed.get(dispatch, True):
                del self._claimed[dispatch]
                if kept:
                    emptied.append(dispatch)
        if emptied:
            async with self._db.write() as conn:
                await outbox.drop_dispatches(conn, emptied)

    # --- background -------------------------------------------------------------------------

    async def _renew_leases(self) -> None:
        interval = self._options.lease_seconds / 3
        while True:
            await asyncio.sleep(interval)
            held = sorted(self._claimed)
            if not held:
                continue
            until = int((self._clock() + self._options.lease_seconds) * 1000)
            try:
                async with self._db.write() as conn:
                    await outbox.renew(
                        conn, owner=self.worker_id, dispatch_ids=held, until_ms=until
                    )
            except Exception:
                log.exception("renewing leases failed")

    async def _prune(self) -> None:
        """Forget payloads no longer needed, and finished events past the outbox's retention,
        in short chunks (no long DELETE or UPDATE that holds locks or bloats PostgreSQL at once)."""
        day_ms = 86_400_000
        while True:
            now_ms = int(self._clock() * 1000)
            history_before_ms = now_ms - self._options.history_days * day_ms
            try:
                await outbox.forget_payloads(
                    self._db, history_before_ms=history_before_ms, sent_before_ms=now_ms
                )
                removed = await outbox.prune(
                    self._db,
                    history_before_ms=history_before_ms,
                    outbox_before_ms=now_ms - self._options.outbox_retention_days * day_ms,
                )
                if removed:
                    log.info("pruned %d finished events past their retention", removed)
            except Exception:
                log.exception("pruning old events failed")
            await asyncio.sleep(self._options.prune_interval_seconds)

    async def _watch_queue(self) -> None:
        assert self._metrics is not None
        while True:
            try:
                async with self._db.read() as conn:
                    pending, oldest = await outbox.queue_stats(conn)
                self._metrics.database_answer.set(self._clock())
                self._metrics.pending.set(pending)
                age = 0.0 if oldest is None else max(0.0, self._clock() - oldest / 1000)
                self._metrics.oldest_age.set(age)
            except Exception:
                log.debug("queue statistics unavailable", exc_info=True)
            await asyncio.sleep(_QUEUE_WATCH_SECONDS)  # a count of the pending rows: not often

    async def _listen(self) -> None:
        """PostgreSQL: wake on NOTIFY from processes that take events."""
        import psycopg

        assert self._listen_url is not None
        backoff = 1.0
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                    self._listen_url, autocommit=True
                ) as conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    backoff = 1.0
                    async for note in conn.notifies():
                        if note.payload != self.worker_id:  # its own: woken in-process
                            self._wake.set()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning("LISTEN connection lost; polling until it is back", exc_info=True)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 30.0)


def _emptied(keeps: dict[int, set[str]]) -> list[int]:
    return sorted(d for d, kept in keeps.items() if not kept)


@dataclass(frozen=True, slots=True)
class _Claim:
    """What a claim leased (rows, with their pushers and events), and the month to seal for."""

    leased: outbox.Leased
    period: str


def _per_request(rows: Sequence[outbox.Claimed], size: int) -> list[list[outbox.Claimed]]:
    """``rows`` by gateway, in their order, ``size`` at most to a group."""
    by_gateway: dict[str, list[outbox.Claimed]] = defaultdict(list)
    for row in rows:
        by_gateway[row.gateway].append(row)
    return [
        group[start : start + size]
        for group in by_gateway.values()
        for start in range(0, len(group), size)
    ]


def _batches(items: Sequence[Ready], size: int, max_bytes: int) -> list[list[Ready]]:
    """``items`` in order, cut into batches of at most ``size`` items and ``max_bytes`` of JSON
    (an item larger than ``max_bytes`` goes alone: the gateway's 413 then names it)."""
    batches: list[list[Ready]] = []
    current: list[Ready] = []
    used = 0
    envelope = len(b'{"notifications":[]}')
    for r in items:
        cost = len(r.item.encoded) + 1
        if current and (len(current) >= size or envelope + used + cost > max_bytes):
            batches.append(current)
            current, used = [], 0
        current.append(r)
        used += cost
    if current:
        batches.append(current)
    return batches
