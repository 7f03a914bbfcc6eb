"""Steps on the stored data that need the master key, which migrations do not have.

Each runs once per database, in this order, after the migrations; the table ``data_steps``
records the ones done, so a later run costs one read each:

1. ``user-pseudonyms`` (:mod:`fdpush.domain.pseudonyms`): user ids become keyed pseudonyms.
2. ``sealed-pushkeys`` (:mod:`fdpush.domain.sealed_pushkeys`): pushkeys are sealed and looked
   up by their keyed index.
"""

from __future__ import annotations

from fdpush.domain.keys import KeyVault
from fdpush.domain.pseudonyms import pseudonymise_stored_users
from fdpush.domain.sealed_pushkeys import seal_stored_pushkeys
from fdpush.storage.database import Database

__all__ = ["run_data_steps"]


async def run_data_steps(db: Database, vault: KeyVault) -> None:
    """Run the steps this database has not had yet."""
    await pseudonymise_stored_users(db, vault)
    await seal_stored_pushkeys(db, vault)
