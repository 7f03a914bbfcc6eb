"""Which master key a database is sealed under, and the identity keys it keeps.

Pseudonyms and pushkey indexes are HMACs under *identity keys*. They are derived from the master
key the database is first opened with, and from then on kept in the database, sealed under the
current master key (table ``keyring``): a rotation of the master key must not change them, since
the user ids behind stored pseudonyms are not known.

The sealed identity keys also say whether a master key is the right one: a process opens them
before anything else (:func:`use_stored_identity`), and refuses to work when they do not open
(another master key) or when a rotation of the master key is unfinished (the database is then
partly under each key: :mod:`fdpush.domain.rotation`).
"""

from __future__ import annotations

import time

from sqlalchemy.ext.asyncio import AsyncConnection

from fdpush import crypto
from fdpush.domain.keys import KeyVault, sealed_context
from fdpush.storage import keyring as storage
from fdpush.storage.database import Database

__all__ = [
    "KeyringError",
    "NotPrepared",
    "RotationUnfinished",
    "WrongMasterKey",
    "keep_identity",
    "use_stored_identity",
]


class KeyringError(Exception):
    """The database cannot be worked on with this master key (the message says why and what to
    do, in one line)."""


class WrongMasterKey(KeyringError):
    def __init__(self) -> None:
        super().__init__(
            "FDPUSH_MASTER_KEY does not open this database: what it stores is sealed under "
            "another master key (after `fdpush master-key rotate`: the new one)"
        )


class RotationUnfinished(KeyringError):
    def __init__(self) -> None:
        super().__init__(
            "a rotation of the master key is unfinished: run `fdpush master-key rotate` again "
            "with the same new key file to finish it, then start with the new key"
        )


class NotPrepared(KeyringError):
    def __init__(self) -> None:
        super().__init__("this database keeps no identity keys yet: run `fdpush migrate` first")


async def use_stored_identity(db: Database, vault: KeyVault, *, first_time: bool) -> bool:
    """Make ``vault`` compute pseudonyms and indexes with the identity keys the database keeps
    (opened with the vault's master key); True.

    When the database keeps none yet: with ``first_time``, False — the vault keeps the keys
    derived from its master key, once that key is seen to open what the database already holds
    (:func:`keep_identity` stores them); otherwise :class:`NotPrepared`.
    """
    async with db.read() as conn:
        ring = await storage.read(conn)
        if ring.next is not None:
            raise RotationUnfinished
        if ring.current is None:
            if not first_time:
                raise NotPrepared
            if not await _opens_what_is_stored(conn, vault):
                raise WrongMasterKey
            return False
    try:
        vault.use_identity(vault.open_identity(ring.current))
    except crypto.CryptoError:
        raise WrongMasterKey from None
    return True


async def keep_identity(db: Database, vault: KeyVault) -> None:
    """Store the vault's identity keys, sealed, unless the database keeps some already (another
    process started at the same moment, with the same master key: the same keys)."""
    async with db.write("keyring") as conn:
        if (await storage.read(conn)).current is None:
            await storage.put(conn, storage.CURRENT, vault.seal_identity(), int(time.time() * 1000))


async def _opens_what_is_stored(conn: AsyncConnection, vault: KeyVault) -> bool:
    """Whether the vault's master key opens a sample of what the database holds sealed (True
    when it holds nothing sealed): one of each kind, whichever data steps have run, since each
    blob is bound to its row's columns as they are."""
    samples = await storage.sealed_samples(conn)
    return not samples or any(
        vault.opens(blob, sealed_context(kind, *key)) for kind, key, blob in samples
    )
