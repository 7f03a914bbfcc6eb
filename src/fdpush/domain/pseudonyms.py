"""Stored user ids are pseudonyms (ZETA A_29957, variant A).

Every user id that enters — the Client-FD API's token or ZETA header, the internal events API,
the RS API, the Python ``Notifier`` — is replaced by its keyed pseudonym
(:meth:`KeyVault.pseudonym`) before it reaches the domain, so every table holds pseudonyms only.

A database written before that holds user ids in the clear. :func:`pseudonymise_stored_users`
replaces them, once, in one transaction: the service runs it at every start after the migrations
(a migration cannot: it has no master key); a database where it ran says so in ``data_steps``.
Key generations are sealed bound to their user, so they are opened and sealed anew.
"""

from __future__ import annotations

import logging
import time

from fdpush.domain.keys import KeyVault
from fdpush.storage import pseudonyms as storage
from fdpush.storage.database import Database

__all__ = ["STEP", "pseudonymise_stored_users"]

STEP = "user-pseudonyms"

log = logging.getLogger(__name__)


async def pseudonymise_stored_users(db: Database, vault: KeyVault) -> int:
    """Replace stored user ids by their pseudonyms unless done before; how many users."""
    async with db.read() as conn:
        if await storage.done(conn, STEP):
            return 0
    async with db.write(STEP) as conn:
        if await storage.done(conn, STEP):  # another process did it meanwhile
            return 0
        renamed = {user: vault.pseudonym(user) for user in await storage.user_ids(conn)}
        resealed = []
        for pusher_id, user, app_id, pushkey, period, material in await storage.key_rows(conn):
            generation = vault.open(user, app_id, pushkey, period, material)
            new_material = vault.seal(renamed[user], app_id, pushkey, generation)
            resealed.append((pusher_id, period, new_material))
        await storage.replace_key_material(conn, resealed)
        await storage.rename_users(conn, renamed)
        await storage.mark_done(conn, STEP, int(time.time() * 1000))
    if renamed:
        log.info("replaced %d stored user ids by their pseudonyms", len(renamed))
    return len(renamed)
