"""Bringing a database to what this version reads: the schema, then the steps on the data.

Migrations change the schema but have no master key; what needs it runs after them, as *data
steps*, each once per database, in this order (the table ``data_steps`` records the ones done,
so a later run costs one read each):

1. ``user-pseudonyms`` (:mod:`fdpush.domain.pseudonyms`): user ids become keyed pseudonyms.
2. ``sealed-pushkeys`` (:mod:`fdpush.domain.sealed_pushkeys`): pushkeys are sealed and looked
   up by their keyed index.

Every entry point calls :func:`prepare_database` before it reads or writes anything: ``fdpush
migrate``, ``fdpush serve`` (each API process), ``fdpush worker`` and the Python ``Notifier``.
So after ``fdpush migrate`` no user id and no pushkey is left in the clear, before any service
starts. It also opens the identity keys the database keeps (:mod:`fdpush.domain.keyring`), and
refuses a master key that is not the database's, or a database whose rotation to a new master
key is unfinished.
"""

from __future__ import annotations

import logging

from fdpush.domain.keyring import keep_identity, use_stored_identity
from fdpush.domain.keys import KeyVault
from fdpush.domain.pseudonyms import pseudonymise_stored_users
from fdpush.domain.sealed_pushkeys import seal_stored_pushkeys
from fdpush.storage.database import Database

__all__ = ["prepare_database", "run_data_steps"]

log = logging.getLogger(__name__)


async def run_data_steps(db: Database, vault: KeyVault) -> None:
    """Run the steps this database has not had yet."""
    await pseudonymise_stored_users(db, vault)
    await seal_stored_pushkeys(db, vault)


async def prepare_database(db: Database, vault: KeyVault, *, migrate: bool) -> str | None:
    """Migrate the schema (when ``migrate``; else it must be current), make ``vault`` use the
    database's identity keys, then run the pending data steps; the schema revision migrated to
    (None when not migrating). :class:`~fdpush.domain.keyring.KeyringError` when the vault's
    master key cannot work on this database.

    A database opened for the first time keeps the identity keys derived from this master key,
    stored once the data steps (which open what it holds) have run.
    """
    revision = None
    if migrate:
        revision = await db.migrate()
        log.info("database schema at revision %s (%s)", revision, db.dialect)
    kept = await use_stored_identity(db, vault, first_time=True)
    await run_data_steps(db, vault)
    if not kept:
        await keep_identity(db, vault)
    return revision
