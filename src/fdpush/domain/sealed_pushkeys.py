"""Stored pushkeys are sealed, found by their keyed index (ZETA A_29957, variant A).

A pushkey must reach the gateway, so it cannot be a one-way pseudonym like a user id: each
pusher keeps its pushkey sealed under the master key (bound to the pusher), and every column
that looks a device up — ``pushers.pushkey``, ``channel_states.pushkey``, the audit log's
``pushkey_hash`` — holds its keyed index (:meth:`KeyVault.pushkey_index`). Key generations are
sealed bound to the index.

A database written before that holds pushkeys in the clear. :func:`seal_stored_pushkeys`
converts it once, in one transaction, after the user ids became pseudonyms; ``data_steps``
records that it ran. The audit log kept an unkeyed SHA-256 prefix of the pushkey: a known
device's becomes its index, the others (devices deleted before) a keyed hash of that prefix, so
their records still belong together.
"""

from __future__ import annotations

import hashlib
import logging
import time

from fdpush.domain.keys import KeyVault
from fdpush.storage import pseudonyms as steps
from fdpush.storage import sealed_pushkeys as storage
from fdpush.storage.database import Database

__all__ = ["STEP", "seal_stored_pushkeys"]

STEP = "sealed-pushkeys"

log = logging.getLogger(__name__)


def _legacy_hash(pushkey: str) -> str:
    """What the audit log kept of a pushkey before this step."""
    return hashlib.sha256(pushkey.encode("utf-8", "surrogatepass")).hexdigest()[:32]


async def seal_stored_pushkeys(db: Database, vault: KeyVault) -> int:
    """Seal the pushkeys stored in the clear and index them, unless done before; how many
    pushers."""
    async with db.read() as conn:
        if await steps.done(conn, STEP):
            return 0
    async with db.write(STEP) as conn:
        if await steps.done(conn, STEP):  # another process did it meanwhile
            return 0
        plain = await storage.plain_pushers(conn)
        devices = await storage.device_pushkeys(conn)
        pushkeys = {p[3] for p in plain} | {d[1] for d in devices}
        index = {pk: vault.pushkey_index(pk) for pk in pushkeys}
        converted = {p[0] for p in plain}
        resealed = []
        for pusher_id, user, app_id, pushkey, period, material in await steps.key_rows(conn):
            if pusher_id not in converted:
                continue
            generation = vault.open(user, app_id, pushkey, period, material)
            new = vault.seal(user, app_id, index[pushkey], generation)
            resealed.append((pusher_id, period, new))
        sealed = []
        for pusher_id, user, app_id, pushkey in plain:
            new_index, blob = vault.seal_pushkey(user, app_id, pushkey)
            sealed.append((pusher_id, new_index, blob))
        known = {_legacy_hash(pk): new for pk, new in index.items()}
        audit = {
            (user, old): known.get(old) or vault.pushkey_index(f"\x00sha256:{old}")
            for user, old in await storage.audit_pushkey_hashes(conn)
            if len(old) == 32  # an unkeyed prefix, written before this step
        }
        await steps.replace_key_material(conn, resealed)
        await storage.seal_pushers(conn, sealed)
        await storage.rename_device_pushkeys(conn, {d: index[d[1]] for d in devices})
        await storage.rename_audit_pushkey_hashes(conn, audit)
        await steps.mark_done(conn, STEP, int(time.time() * 1000))
    if plain:
        log.info("sealed %d stored pushkeys; lookups use their keyed index", len(plain))
    return len(plain)
