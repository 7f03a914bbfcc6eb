"""Rotating the master key: everything sealed under it, sealed again under a new one.

What is sealed under the master key: each pusher's pushkey and key generations, the events'
payloads (pending notifications and the history), the notification bodies written before
revision 0003, and the database's identity keys (:mod:`fdpush.domain.keyring`). Pseudonyms
and pushkey indexes are HMACs under the identity keys, which stay as they are: they are only
sealed again, like the rest.

How it stays safe when it stops halfway (a crash, Ctrl-C, a lost connection):

1. First, in one transaction, the identity keys are stored sealed under the new key beside
   those under the current key (``identity-next``). From then on every fdpush process refuses
   to start (:class:`~fdpush.domain.keyring.RotationUnfinished`): no service ever works on a
   database that is partly under each key.
2. Then each kind of record is walked in chunks, one transaction per chunk; a blob that opens
   under the current key is sealed under the new one, a blob that opens under the new key
   already (a chunk of a run that stopped) is left alone. So a run that stopped is finished by
   running it again with the same two keys; nothing is done twice and nothing is lost.
3. Last, in one transaction, the identity keys under the new key become the database's
   (``identity``): only the new key opens the database from then on.

Running it again after it finished (the current key given is the old one) sweeps for blobs
still under the old key — e.g. written by a process that was wrongly left running — and seals
them under the new one. A blob that opens under neither key (damaged, or sealed under a third
key: unreadable before as after) is left as it is and counted.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from fdpush import crypto
from fdpush.domain.keyring import KeyringError, NotPrepared, WrongMasterKey
from fdpush.domain.keys import (
    KeyVault,
    generation_context,
    pushkey_context,
    record_context,
)
from fdpush.storage import keyring
from fdpush.storage import rotation as storage
from fdpush.storage.database import Database

__all__ = ["OtherConnections", "Progress", "Rotation", "RotationToAnotherKey", "rotate_master_key"]

CHUNK = 1000  # rows per transaction: short locks, and little to redo after a stop

# Progress: (what, rows done so far, rows in all) after each chunk; ``what`` is one of
# "pushers", "event payloads", "notification bodies".
Progress = Callable[[str, int, int], None]


class RotationToAnotherKey(KeyringError):
    def __init__(self) -> None:
        super().__init__(
            "an unfinished rotation to another new master key is in this database: finish it "
            "with that key file (the new key given does not open its identity keys)"
        )


class OtherConnections(KeyringError):
    def __init__(self, count: int) -> None:
        super().__init__(
            f"{count} other session(s) are connected to this database: stop every fdpush "
            "process (serve, worker, a Notifier) before rotating the master key; if those "
            "sessions are not fdpush, pass --ignore-connections"
        )


@dataclass(slots=True)
class Rotation:
    """What a run did: records sealed anew, found under the new key already, and opening under
    neither key, by kind; ``finished``: the database is now the new key's."""

    resealed: dict[str, int] = field(default_factory=dict)
    already: dict[str, int] = field(default_factory=dict)
    unopenable: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    resumed: bool = False  # a run that had stopped was finished
    swept: bool = False  # the database was the new key's already: a sweep for leftovers

    def count(self, what: str, outcome: bytes | Exception | None) -> None:
        book = (
            self.unopenable
            if isinstance(outcome, Exception)
            else self.already
            if outcome is None
            else self.resealed
        )
        book[what] = book.get(what, 0) + 1


async def rotate_master_key(
    db: Database,
    current: KeyVault,
    new: KeyVault,
    *,
    chunk: int = CHUNK,
    progress: Progress = lambda _what, _done, _total: None,
    ignore_connections: bool = False,
) -> Rotation:
    """Seal everything under ``new``'s master key instead of ``current``'s (see the module's
    description); :class:`KeyringError` when these keys cannot do it."""
    report = Rotation()
    async with db.read() as conn:
        others = await storage.other_connections(conn)
        ring = await keyring.read(conn)
    if others and not ignore_connections:
        raise OtherConnections(others)
    if ring.current is None:
        raise NotPrepared
    try:
        identity = current.open_identity(ring.current)
    except crypto.CryptoError:
        if ring.next is not None:
            raise WrongMasterKey from None
        try:
            identity = new.open_identity(ring.current)
        except crypto.CryptoError:
            raise WrongMasterKey from None
        report.swept = True
    current.use_identity(identity)
    new.use_identity(identity)
    if ring.next is not None:
        try:
            new.open_identity(ring.next)
        except crypto.CryptoError:
            raise RotationToAnotherKey from None
        report.resumed = True
    elif not report.swept:
        async with db.write("keyring") as conn:  # from here on no process starts
            await keyring.put(conn, keyring.NEXT, new.seal_identity(), int(time.time() * 1000))
    await _pushers(db, current, new, chunk, progress, report)
    for kind, what in (
        ("event-payload", "event payloads"),
        ("notification", "notification bodies"),
    ):
        await _records(db, kind, what, current, new, chunk, progress, report)
    if not report.swept:
        async with db.write("keyring") as conn:
            await keyring.finish_rotation(conn)
    report.finished = True
    return report


def _reseal(
    current: KeyVault, new: KeyVault, blob: bytes, context: bytes
) -> bytes | Exception | None:
    try:
        return current.reseal(blob, context, new)
    except crypto.CryptoError as exc:
        return exc


async def _pushers(
    db: Database, current: KeyVault, new: KeyVault, chunk: int, progress: Progress, report: Rotation
) -> None:
    """Each pusher's sealed pushkey and key generations, one chunk of pushers at a time."""
    async with db.read() as conn:
        total = await storage.count_pushers(conn)
    done, after = 0, 0
    progress("pushers", 0, total)
    while True:
        async with db.write() as conn:
            found = await storage.pushers_after(conn, after, chunk)
            if not found:
                break
            pushkeys: list[tuple[int, bytes]] = []
            generations: list[tuple[int, str, bytes]] = []
            for p in found:
                if p.pushkey_sealed is not None:
                    context = pushkey_context(p.user_id, p.app_id, p.pushkey)
                    outcome = _reseal(current, new, p.pushkey_sealed, context)
                    report.count("pushkeys", outcome)
                    if isinstance(outcome, bytes):
                        pushkeys.append((p.id, outcome))
                for period, material in p.generations:
                    context = generation_context(p.user_id, p.app_id, p.pushkey, period)
                    outcome = _reseal(current, new, material, context)
                    report.count("key generations", outcome)
                    if isinstance(outcome, bytes):
                        generations.append((p.id, period, outcome))
            await storage.replace_pusher_blobs(conn, pushkeys, generations)
        after = found[-1].id
        done += len(found)
        progress("pushers", done, max(total, done))


async def _records(
    db: Database,
    kind: str,
    what: str,
    current: KeyVault,
    new: KeyVault,
    chunk: int,
    progress: Progress,
    report: Rotation,
) -> None:
    """The sealed records of ``kind``, one chunk at a time."""
    async with db.read() as conn:
        total = await storage.count_records(conn, kind)
    done, after = 0, ""
    progress(what, 0, total)
    while True:
        async with db.write() as conn:
            found = await storage.records_after(conn, kind, after, chunk)
            if not found:
                break
            resealed: list[tuple[str, bytes]] = []
            for record_id, blob in found:
                outcome = _reseal(current, new, blob, record_context(kind, record_id))
                report.count(what, outcome)
                if isinstance(outcome, bytes):
                    resealed.append((record_id, outcome))
            await storage.replace_records(conn, kind, resealed)
        after = found[-1][0]
        done += len(found)
        progress(what, done, max(total, done))
