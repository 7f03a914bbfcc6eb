"""The service's hold on key material: month generations sealed under the master key, and the
identity keys of the stored pseudonyms and pushkey indexes.

Concept: after the first derivation the FD deletes the iss; only generations are kept, and
only sealed (``crypto.seal_at_rest``), each bound to its pusher and month so that a blob moved
to another row does not open. A pushkey is stored only sealed (bound to its pusher), beside its
keyed index, which is what lookups compare (ZETA A_29957).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime
from functools import lru_cache, partial
from typing import NamedTuple
from zoneinfo import ZoneInfo

from fdpush import crypto

__all__ = [
    "BERLIN",
    "RETENTION_MONTHS",
    "Advance",
    "KeyVault",
    "advance",
    "current_period",
    "generation_context",
    "identity_context",
    "pushkey_context",
    "record_context",
    "sealed_context",
]

BERLIN = ZoneInfo("Europe/Berlin")
# Pseudonyms and pushkey indexes a vault remembers, each: the API computes them for every
# request, and an app's requests name the same user and device again and again.
INDEXES_KEPT = 10_000


def current_period(now: datetime | None = None) -> str:
    """The month a key is used for, in Europe/Berlin time (concept: the FD's month)."""
    moment = (now or datetime.now(BERLIN)).astimezone(BERLIN)
    return f"{moment.year:04d}-{moment.month:02d}"


def generation_context(user_id: str, app_id: str, pushkey_index: str, period: str) -> bytes:
    """What a key generation is sealed bound to: its pusher (as stored) and month."""
    return "\x00".join(
        ("fdpush/key-generation/v1", user_id, app_id, pushkey_index, period)
    ).encode()


def pushkey_context(user_id: str, app_id: str, pushkey_index: str) -> bytes:
    """What a sealed pushkey is bound to: its pusher (as stored)."""
    return record_context("pushkey", "\x00".join((user_id, app_id, pushkey_index)))


def record_context(kind: str, record_id: str) -> bytes:
    """What a sealed record (an event payload, a notification body) is bound to."""
    return f"fdpush/{kind}/v1\x00{record_id}".encode()


def sealed_context(kind: str, *key: str) -> bytes:
    """The context of any stored blob by its kind and its row's key: ``key-generation`` (user,
    app_id, pushkey index, month), ``pushkey`` (user, app_id, pushkey index), or a record kind
    (``event-payload``, ``notification``: its id)."""
    if kind == "key-generation":
        return generation_context(*key)
    if kind == "pushkey":
        return pushkey_context(*key)
    return record_context(kind, *key)


def identity_context() -> bytes:
    """What the database's identity keys are sealed bound to."""
    return b"fdpush/identity-keys/v1"


class KeyVault:
    """Seals and opens what is stored under the master key; computes the keyed indexes.

    Every stored user id is :meth:`pseudonym` of it, every stored pushkey column holds
    :meth:`pushkey_index` of it; both are HMACs under the identity keys.
    """

    def __init__(self, master_key: bytes, identity: crypto.IdentityKeys | None = None) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._master_key = master_key
        self.use_identity(identity or crypto.IdentityKeys.derive(master_key))

    def __repr__(self) -> str:
        return "KeyVault(<master key redacted>)"

    @property
    def identity(self) -> crypto.IdentityKeys:
        """The keys of the pseudonyms and pushkey indexes this vault computes: derived from its
        master key until :meth:`use_identity` gives it those a database keeps."""
        return self._identity

    def use_identity(self, identity: crypto.IdentityKeys) -> None:
        """Compute pseudonyms and indexes with the identity keys a database keeps (they were
        derived from the master key it was first opened with, which may since have changed)."""
        self._identity = identity
        # Pure functions of the identity keys, so remembered results never go stale: new keys,
        # new memory. Held in the process only (ids and pushkeys it has been told), never logged.
        self._pseudonym: Callable[[str], str] = lru_cache(INDEXES_KEPT)(
            partial(crypto.user_pseudonym, identity)
        )
        self._pushkey_index: Callable[[str], str] = lru_cache(INDEXES_KEPT)(
            partial(crypto.pushkey_index, identity)
        )

    def seal_identity(self) -> bytes:
        """The identity keys sealed under the master key, as the database keeps them."""
        raw = self._identity.to_bytes()
        return crypto.seal_at_rest(self._master_key, raw, identity_context())

    def open_identity(self, sealed: bytes) -> crypto.IdentityKeys:
        """Identity keys a database keeps (:class:`crypto.CryptoError`: not under this key)."""
        raw = crypto.unseal_at_rest(self._master_key, sealed, identity_context())
        return crypto.IdentityKeys.from_bytes(raw)

    def opens(self, blob: bytes, context: bytes) -> bool:
        """Whether ``blob`` was sealed under this vault's master key for ``context``."""
        try:
            crypto.unseal_at_rest(self._master_key, blob, context)
        except crypto.CryptoError:
            return False
        return True

    def reseal(self, blob: bytes, context: bytes, new: KeyVault) -> bytes | None:
        """``blob`` (sealed for ``context``) sealed under ``new``'s master key instead; None when
        it is under ``new``'s already. :class:`crypto.CryptoError` when neither key opens it."""
        try:
            plain = crypto.unseal_at_rest(self._master_key, blob, context)
        except crypto.CryptoError:
            if new.opens(blob, context):
                return None
            raise
        return crypto.seal_at_rest(new._master_key, plain, context)

    def seal(
        self, user_id: str, app_id: str, pushkey_index: str, generation: crypto.KeyGeneration
    ) -> bytes:
        """Seal a key generation bound to its pusher ``(user_id, app_id, pushkey_index)``."""
        context = generation_context(user_id, app_id, pushkey_index, generation.period)
        return crypto.seal_at_rest(self._master_key, generation.secret + generation.key, context)

    def open(
        self, user_id: str, app_id: str, pushkey_index: str, period: str, material: bytes
    ) -> crypto.KeyGeneration:
        context = generation_context(user_id, app_id, pushkey_index, period)
        plain = crypto.unseal_at_rest(self._master_key, material, context)
        return crypto.KeyGeneration(period, plain[:32], plain[32:])

    def pseudonym(self, user_id: str) -> str:
        """What is stored for ``user_id``: its keyed pseudonym (:func:`crypto.user_pseudonym`)."""
        return self._pseudonym(user_id)

    def pushkey_index(self, pushkey: str) -> str:
        """What is stored and looked up for ``pushkey`` (:func:`crypto.pushkey_index`)."""
        return self._pushkey_index(pushkey)

    def seal_pushkey(self, user_id: str, app_id: str, pushkey: str) -> tuple[str, bytes]:
        """``(index, sealed pushkey)`` of a pusher: the sealed pushkey is bound to its row."""
        index = self.pushkey_index(pushkey)
        context = pushkey_context(user_id, app_id, index)
        plain = pushkey.encode("utf-8", "surrogatepass")
        return index, crypto.seal_at_rest(self._master_key, plain, context)

    def open_pushkey(self, user_id: str, app_id: str, pushkey_index: str, sealed: bytes) -> str:
        """The pushkey of a pusher, from its sealed copy (:class:`crypto.CryptoError` when it
        does not open)."""
        context = pushkey_context(user_id, app_id, pushkey_index)
        plain = crypto.unseal_at_rest(self._master_key, sealed, context)
        return plain.decode("utf-8", "surrogatepass")

    def seal_record(self, kind: str, record_id: str, plaintext: bytes) -> bytes:
        """Seal a stored record (a notification body, an event payload) bound to its id."""
        return crypto.seal_at_rest(self._master_key, plaintext, record_context(kind, record_id))

    def open_record(self, kind: str, record_id: str, blob: bytes) -> bytes:
        return crypto.unseal_at_rest(self._master_key, blob, record_context(kind, record_id))


RETENTION_MONTHS = 2  # concept: secrets and keys older than two months are deleted


class Advance(NamedTuple):
    """A pusher's key schedule brought to a month: the generation to seal with, and the change
    to persist *before* it is used (new generations sealed at rest; expired months to delete).
    A NamedTuple: immutable, and cheaper to make than a frozen dataclass (one per pusher the
    worker sends to)."""

    generation: crypto.KeyGeneration
    added: tuple[tuple[str, bytes], ...]  # (period, sealed material)
    removed: tuple[str, ...]  # periods past the retention

    @property
    def changes(self) -> bool:
        return bool(self.added or self.removed)


def advance(
    vault: KeyVault,
    owner: tuple[str, str, str],
    generations: Sequence[tuple[str, bytes]],
    period: str,
) -> Advance | None:
    """The generation for ``period`` of the pusher ``owner`` = (user_id, app_id, pushkey index).

    ``generations`` are the stored ``(period, sealed material)`` pairs, oldest first. Skipped
    months are derived in sequence; only what the retention keeps is persisted (never less than
    the youngest). A generation later than ``period`` (the app's clock ran ahead) is used as
    it is. None when the pusher has no generation that opens (another master key): never fall
    back to plain text for a pusher that asked for encryption.
    """
    if not generations:
        return None
    youngest_period, material = generations[-1]
    try:
        youngest = vault.open(*owner, youngest_period, material)
    except crypto.CryptoError:
        return None
    if youngest_period == period and len(generations) == 1:
        return Advance(youngest, (), ())  # the common case: this month's key, nothing to do
    newer = crypto.ratchet(youngest, period)
    newest = newer[-1] if newer else youngest
    added = tuple(
        (g.period, vault.seal(*owner, g))
        for g in newer
        if crypto.periods_between(g.period, period) <= RETENTION_MONTHS
    )
    removed = tuple(
        stored
        for stored, _ in generations
        if stored != newest.period and crypto.periods_between(stored, period) > RETENTION_MONTHS
    )
    return Advance(newest, added, removed)
