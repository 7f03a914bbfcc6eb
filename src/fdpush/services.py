"""The composition root: fdpush's services, built once from the settings.

Every entry point gets its services here — ``fdpush serve`` (:func:`fdpush.web.app.create_app`,
and through it ``fdpush demo``), each ``fdpush worker`` process, the Python
:class:`fdpush.Notifier`, and the commands ``migrate``, ``failed``, ``audit`` and ``user …`` —
so that each service is configured in one place, from one :class:`~fdpush.config.Settings`.

The lifecycle:

- :meth:`Services.build` makes the objects. No I/O yet (nothing connects), but configuration
  problems raise :class:`~fdpush.config.ConfigError` here, before anything starts.
- :meth:`Services.prepare` brings the database up to date
  (:func:`~fdpush.domain.data_steps.prepare_database`: the migrations unless
  ``FDPUSH_MIGRATE_ON_START=0``, the database's identity keys, the pending data steps); a
  process that works on a database another one prepared calls
  :meth:`Services.use_prepared_database` instead.
- :meth:`Services.start_worker` runs the delivery worker in the background (``serve``);
  a ``worker`` process runs ``services.worker.run()`` in the foreground instead.
- :meth:`Services.close` stops the worker (its in-flight batches finish), then closes the
  gateway connections and the database.

:meth:`Services.open` does it all as an async context manager.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, PlatformCollector, ProcessCollector

from fdpush.config import Settings, resolve_master_key
from fdpush.domain.channels import ChannelService
from fdpush.domain.data_steps import prepare_database
from fdpush.domain.events import EventService
from fdpush.domain.gateway_url import GatewayUrlPolicy
from fdpush.domain.history import HistoryService
from fdpush.domain.keyring import use_stored_identity
from fdpush.domain.keys import KeyVault
from fdpush.domain.pushers import PusherService
from fdpush.domain.users import UserRequests
from fdpush.domain.zeta import RsService
from fdpush.logs import set_reference_key
from fdpush.storage.database import Database

if TYPE_CHECKING:  # delivery is imported only by the processes that deliver
    from fdpush.delivery.gateway import GatewayClient
    from fdpush.delivery.worker import DeliveryWorker

__all__ = ["API_POOL_SIZE", "POOL_SIZE", "Services"]

# Database connections per process when FDPUSH_DATABASE_POOL_SIZE is not set. An API process
# keeps as many as requests in flight at a usual load (a write holds its connection while it
# waits for a lock; with fewer connections than such writes, others queue for one and both
# throughput and p99 suffer); a delivery process or a command needs fewer.
API_POOL_SIZE = 32
POOL_SIZE = 10


@dataclass(eq=False)
class Services:
    """The database, the key vault, the domain services and (when asked for) the delivery
    worker with its gateway client, all of one process. Make them with :meth:`build` or
    :meth:`open`."""

    settings: Settings
    db: Database
    vault: KeyVault
    metrics: CollectorRegistry  # this process's Prometheus registry
    url_policy: GatewayUrlPolicy  # the gateway allow-list: at registration and at send time
    events: EventService
    pushers: PusherService
    channels: ChannelService
    history: HistoryService
    users: UserRequests
    rs: RsService
    worker: DeliveryWorker | None = None
    gateway_client: GatewayClient | None = None  # the worker's; closed with the services
    _worker_task: asyncio.Task[None] | None = field(default=None, init=False, repr=False)

    @classmethod
    def build(
        cls,
        settings: Settings,
        *,
        worker: bool = False,
        master_key: bytes | None = None,
        pool_size: int = POOL_SIZE,
        tool: bool = False,
    ) -> Services:
        """The services of one process, from ``settings``.

        ``worker``: with the delivery worker and its gateway client (the gateway TLS files are
        checked first). ``master_key``: already resolved (a process started by another); else
        ``FDPUSH_MASTER_KEY`` or the key file (made if missing, see
        :func:`~fdpush.config.resolve_master_key`). ``pool_size``: database connections unless
        ``FDPUSH_DATABASE_POOL_SIZE`` says otherwise. ``tool``: for a command that lists or
        erases (``fdpush failed``, ``fdpush user``): PostgreSQL plans its reads as it likes,
        where the service's statements are planned by index (:class:`Database` ``by_key``).
        Raises ``ConfigError``.
        """
        if worker:
            settings.check_delivery()
        master_key = master_key if master_key is not None else resolve_master_key(settings)
        set_reference_key(master_key)  # log references of this process, keyed like every other
        db = Database(
            settings.database_url,
            pool_size=settings.database_pool_size or pool_size,
            by_key=not tool,  # every statement of the API and of delivery reads by key
        )
        vault = KeyVault(master_key)
        metrics = CollectorRegistry()
        ProcessCollector(registry=metrics)
        PlatformCollector(registry=metrics)
        url_policy = GatewayUrlPolicy(
            settings.gateway_allowlist, allow_http=settings.gateway_allow_http
        )
        delivery, client = (
            _delivery(settings, db, vault, metrics, url_policy) if worker else (None, None)
        )
        events = EventService(
            db,
            catalog=settings.channels,
            vault=vault,
            history_days=settings.history_days,
            encryption_mode=settings.encryption,
            # A new event in this process wakes its worker at once (others hear NOTIFY).
            on_new_work=delivery.wake if delivery is not None else lambda: None,
            woken_worker=delivery.worker_id if delivery is not None else "",
        )
        return cls(
            settings=settings,
            db=db,
            vault=vault,
            metrics=metrics,
            url_policy=url_policy,
            events=events,
            pushers=PusherService(
                db,
                url_policy=url_policy,
                encryption_mode=settings.encryption,
                max_pushers_per_user=settings.max_pushers_per_user,
                vault=vault,
            ),
            channels=ChannelService(db, settings.channels),
            history=HistoryService(db, vault, enabled=settings.history_days > 0),
            users=UserRequests(db, vault),
            rs=RsService(
                db,
                events,
                catalog=settings.channels,
                idempotency_hours=settings.rs_idempotency_hours,
                max_pending=settings.rs_max_pending,
                pseudonym=vault.pseudonym,
            ),
            worker=delivery,
            gateway_client=client,
        )

    @classmethod
    @asynccontextmanager
    async def open(
        cls,
        settings: Settings,
        *,
        worker: bool = False,
        prepare: bool = True,
        master_key: bytes | None = None,
        pool_size: int = POOL_SIZE,
        tool: bool = False,
    ) -> AsyncIterator[Services]:
        """:meth:`build`, then :meth:`prepare` (with ``prepare=False``
        :meth:`use_prepared_database`: another process prepared it, or it must not be changed);
        :meth:`close` at the end. ``KeyringError`` when the master key cannot work on the
        database."""
        services = cls.build(
            settings, worker=worker, master_key=master_key, pool_size=pool_size, tool=tool
        )
        try:
            if prepare:
                await services.prepare()
            else:
                await services.use_prepared_database()
            yield services
        finally:
            await services.close()

    async def prepare(self, *, migrate: bool | None = None) -> str | None:
        """Bring the database up to date (:func:`~fdpush.domain.data_steps.prepare_database`)
        and make the vault use its identity keys; the schema revision migrated to, or None when
        not migrating. ``migrate``: whether to apply the migrations (default
        ``FDPUSH_MIGRATE_ON_START``). ``KeyringError`` when the master key cannot work on it."""
        if migrate is None:
            migrate = self.settings.migrate_on_start
        return await prepare_database(self.db, self.vault, migrate=migrate)

    async def use_prepared_database(self) -> None:
        """Make the vault use the identity keys of a database another process prepared.
        ``KeyringError`` when the master key cannot work on it, or it was never prepared."""
        await use_stored_identity(self.db, self.vault, first_time=False)

    def start_worker(self) -> None:
        """Run the delivery worker in the background until :meth:`close`."""
        if self.worker is None:
            raise RuntimeError("these services were built without a worker")
        if self._worker_task is None:
            self._worker_task = asyncio.create_task(self.worker.run())

    async def close(self) -> None:
        """Stop the worker (in-flight batches finish), close the gateway client and the
        database."""
        try:
            if self.worker is not None and self._worker_task is not None:
                self.worker.stop()
                await self._worker_task
        finally:
            self._worker_task = None
            try:
                if self.gateway_client is not None:
                    await self.gateway_client.aclose()
            finally:
                await self.db.close()


def _delivery(
    settings: Settings,
    db: Database,
    vault: KeyVault,
    metrics: CollectorRegistry,
    url_policy: GatewayUrlPolicy,
) -> tuple[DeliveryWorker, GatewayClient]:
    """A delivery worker and the gateway client it sends with."""
    from fdpush.delivery.compose import refusal_by
    from fdpush.delivery.gateway import GatewayClient
    from fdpush.delivery.worker import DeliveryMetrics, DeliveryWorker, WorkerOptions

    client = GatewayClient(
        ca_file=settings.gateway_ca_file,
        client_cert=settings.gateway_client_cert,
        client_key=settings.gateway_client_key,
        timeout_seconds=settings.gateway_timeout_seconds,
    )
    worker = DeliveryWorker(
        db,
        vault,
        client,
        options=WorkerOptions(
            batch_size=settings.delivery_batch_size,
            concurrency_per_gateway=settings.delivery_concurrency_per_gateway,
            max_age_seconds=settings.delivery_max_age_seconds,
            lease_seconds=settings.delivery_lease_seconds,
            history_days=settings.history_days,
            prune_interval_seconds=settings.delivery_prune_interval_seconds,
        ),
        # The allow-list is checked again at send time: a gateway removed from it gets nothing.
        gateway_refusal=refusal_by(url_policy.check),
        metrics=DeliveryMetrics(metrics),
        listen_url=settings.database_url if db.dialect == "postgresql" else None,
    )
    return worker, client
