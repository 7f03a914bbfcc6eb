"""Pushers: the rules of ``pushers/set`` and ``GET pushers``.

- Identity is (user, ``app_id``, ``pushkey``); the caller's own pusher is updated in place.
- ``append: false`` removes the same ``app_id`` + ``pushkey`` of *other* users, in the same
  transaction as the upsert; ``append: true`` keeps them.
- ``kind: null`` deletes only the caller's pusher, idempotently; a device's channel choices go
  with its last pusher.
- ``data.url`` must pass the operator's allow-list; a bounded number of pushers per user.
- ``encryption``: the first key generation is derived at registration and stored sealed; the iss
  is dropped with the request (concept: "After the first derivation the FD deletes the iss").
- The pushkey is stored only sealed; rows are found by its keyed index (ZETA A_29957).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

from fdpush import crypto
from fdpush.domain.errors import InvalidParam, MissingParam, ResourceLimitExceeded
from fdpush.domain.gateway_url import GatewayUrlPolicy
from fdpush.domain.keys import BERLIN, KeyVault, current_period
from fdpush.domain.models import Pusher, PusherRegistration
from fdpush.logs import user_ref
from fdpush.storage import queries
from fdpush.storage.database import Database, Transaction

__all__ = ["PusherService", "device_lock", "user_lock"]

log = logging.getLogger(__name__)

# How far from today an iss's month may lie. Apps create the iss when they register, so its
# month is the current one; older months (re-registrations, the concept's test vector) are
# derived forward at send time, which costs one HKDF per month.
MAX_ISS_AGE_MONTHS = 120
MAX_ISS_FUTURE_MONTHS = 1


def user_lock(user_id: str) -> str:
    return f"user:{user_id}"


def device_lock(pushkey_index: str) -> str:
    """Every write that touches pushers or channel states of a pushkey, of any user, takes it."""
    return f"pushkey:{pushkey_index}"


class PusherService:
    """Creates, updates, deletes and lists the pushers of a user."""

    def __init__(
        self,
        db: Database,
        *,
        url_policy: GatewayUrlPolicy,
        encryption_mode: str,
        max_pushers_per_user: int,
        vault: KeyVault,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._db = db
        self._url_policy = url_policy
        self._encryption_mode = encryption_mode
        self._max_pushers = max_pushers_per_user
        self._vault = vault
        self._clock = clock

    async def list(self, user_id: str) -> list[Pusher]:
        """The user's pushers, each with its pushkey opened (one that does not open is left
        out, and logged without it)."""
        async with self._db.read() as conn:
            rows = await queries.list_pushers(conn, user_id)
        found = []
        for r in rows:
            pushkey = self._pushkey(r)
            if pushkey is None:
                continue
            found.append(
                Pusher(
                    app_id=r.app_id,
                    pushkey=pushkey,
                    kind=r.kind,
                    app_display_name=r.app_display_name,
                    device_display_name=r.device_display_name,
                    profile_tag=r.profile_tag,
                    lang=r.lang,
                    data=r.data,
                )
            )
        return found

    def _pushkey(self, row: queries.PusherRow) -> str | None:
        try:
            if row.pushkey_sealed is None:
                raise crypto.CryptoError("no sealed pushkey stored")
            return self._vault.open_pushkey(
                row.user_id, row.app_id, row.pushkey, row.pushkey_sealed
            )
        except crypto.CryptoError:
            log.error("a stored pushkey does not open; pusher %d left out", row.id)
            return None

    def _first_generation(self, reg: PusherRegistration) -> crypto.KeyGeneration | None:
        enc = reg.encryption
        if enc is None:
            if self._encryption_mode == "required":
                raise MissingParam(["encryption"])
            return None
        if self._encryption_mode == "forbidden":
            raise InvalidParam("encryption is not accepted by this service")
        if enc.method != crypto.METHOD:
            raise InvalidParam(f"encryption.method must be {crypto.METHOD!r}")
        today = current_period(datetime.fromtimestamp(self._clock(), BERLIN))
        age = crypto.periods_between(enc.time_iss_created, today)
        if age < -MAX_ISS_FUTURE_MONTHS:
            raise InvalidParam("encryption.time_iss_created lies in the future")
        if age > MAX_ISS_AGE_MONTHS:
            raise InvalidParam(
                f"encryption.time_iss_created is more than {MAX_ISS_AGE_MONTHS} months old"
            )
        return crypto.derive_generation(enc.iss, enc.time_iss_created)

    async def register(self, user_id: str, reg: PusherRegistration) -> None:
        """Create or update the caller's pusher (``kind`` not null)."""
        self._url_policy.check(str(reg.data["url"]))
        generation = self._first_generation(reg)
        index, pushkey_sealed = self._vault.seal_pushkey(user_id, reg.app_id, reg.pushkey)
        sealed = (
            None
            if generation is None
            else (generation.period, self._vault.seal(user_id, reg.app_id, index, generation))
        )
        values = {
            "kind": reg.kind,
            "app_display_name": reg.app_display_name,
            "device_display_name": reg.device_display_name,
            "profile_tag": reg.profile_tag,
            "lang": reg.lang,
            "data": reg.data,
            "pushkey_ts": int(self._clock()),
            "encryption_method": None if reg.encryption is None else reg.encryption.method,
            "key_identifier": None if reg.encryption is None else reg.encryption.key_identifier,
        }
        write = queries.PusherWrite(user_id, reg.app_id, index, pushkey_sealed, values, sealed)
        too_many = f"Too many pushers: at most {self._max_pushers} per user; delete one first"
        async with self._db.transaction(user_lock(user_id), device_lock(index)) as tx:
            # The common case in one step: no other user's pusher to remove.
            alone = await queries.save_alone(
                tx,
                write,
                detail=_audit_detail(reg, sealed is not None, removed=0),
                remove_others=not reg.append,
                max_pushers=self._max_pushers,
            )
            if alone is not None:
                if not alone.saved:
                    raise ResourceLimitExceeded(too_many)
                created, removed = alone.existing is None, 0
            else:
                created, removed = await self._save_step_by_step(tx, reg, write, too_many)
        log.info(
            "pusher %s",
            "created" if created else "updated",
            extra={"user": user_ref(user_id), "app_id": reg.app_id, "removed": removed},
        )

    async def _save_step_by_step(
        self, tx: Transaction, reg: PusherRegistration, write: queries.PusherWrite, too_many: str
    ) -> tuple[bool, int]:
        """Remove other users' same pushers (unless ``append``), then save the caller's;
        whether it was created, and how many users' pushers were removed."""
        user_id, index = write.user_id, write.pushkey
        existing, count, removed = await queries.claim_slot(
            tx, user_id, reg.app_id, index, remove_others=not reg.append
        )
        if existing is None and count >= self._max_pushers:
            raise ResourceLimitExceeded(too_many)  # rolls back the removal, too
        for other in removed:
            if not await queries.device_exists(tx, other, index):
                await queries.delete_device_states(tx, other, index)
            await queries.record_audit(
                tx,
                action="pusher.removed_by_append",
                actor=user_id,
                user_id=other,
                app_id=reg.app_id,
                pushkey=index,
            )
        await queries.save_registration(
            tx,
            existing,
            write,
            detail=_audit_detail(reg, write.generation is not None, removed=len(removed)),
        )
        return existing is None, len(removed)

    async def delete(self, user_id: str, app_id: str, pushkey: str) -> None:
        """Delete the caller's pusher; succeed quietly when there is none (idempotent)."""
        index = self._vault.pushkey_index(pushkey)
        async with self._db.transaction(user_lock(user_id), device_lock(index)) as tx:
            if not await queries.delete_pusher(tx, user_id, app_id, index):
                return
            if not await queries.device_exists(tx, user_id, index):
                await queries.delete_device_states(tx, user_id, index)
            await queries.record_audit(
                tx,
                action="pusher.deleted",
                actor=user_id,
                user_id=user_id,
                app_id=app_id,
                pushkey=index,
            )
        log.info("pusher deleted", extra={"user": user_ref(user_id), "app_id": app_id})


def _audit_detail(reg: PusherRegistration, encrypted: bool, *, removed: int) -> dict[str, Any]:
    """What the audit log records of a registration (never the pushkey or the iss)."""
    return {"encrypted": encrypted, "append": reg.append, "removed_from_other_users": removed}
