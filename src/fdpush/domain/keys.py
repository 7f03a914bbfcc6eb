"""The service's hold on key material: month generations sealed under the master key.

Concept: after the first derivation the FD deletes the iss; only generations are kept, and
only sealed (``crypto.seal_at_rest``), each bound to its pusher and month so that a blob moved
to another row does not open.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from zoneinfo import ZoneInfo

from fdpush import crypto

__all__ = ["BERLIN", "RETENTION_MONTHS", "Advance", "KeyVault", "advance", "current_period"]

BERLIN = ZoneInfo("Europe/Berlin")


def current_period(now: datetime | None = None) -> str:
    """The month a key is used for, in Europe/Berlin time (concept: the FD's month)."""
    moment = (now or datetime.now(BERLIN)).astimezone(BERLIN)
    return f"{moment.year:04d}-{moment.month:02d}"


class KeyVault:
    """Seals and opens key generations under the master key."""

    def __init__(self, master_key: bytes) -> None:
        if len(master_key) != 32:
            raise ValueError("the master key must be 32 bytes")
        self._master_key = master_key

    def __repr__(self) -> str:
        return "KeyVault(<master key redacted>)"

    @staticmethod
    def _context(user_id: str, app_id: str, pushkey: str, period: str) -> bytes:
        return "\x00".join(("fdpush/key-generation/v1", user_id, app_id, pushkey, period)).encode()

    def seal(
        self, user_id: str, app_id: str, pushkey: str, generation: crypto.KeyGeneration
    ) -> bytes:
        context = self._context(user_id, app_id, pushkey, generation.period)
        return crypto.seal_at_rest(self._master_key, generation.secret + generation.key, context)

    def open(
        self, user_id: str, app_id: str, pushkey: str, period: str, material: bytes
    ) -> crypto.KeyGeneration:
        context = self._context(user_id, app_id, pushkey, period)
        plain = crypto.unseal_at_rest(self._master_key, material, context)
        return crypto.KeyGeneration(period=period, secret=plain[:32], key=plain[32:])

    def pseudonym(self, user_id: str) -> str:
        """What is stored for ``user_id``: its keyed pseudonym (:func:`crypto.user_pseudonym`)."""
        return crypto.user_pseudonym(self._master_key, user_id)

    def seal_record(self, kind: str, record_id: str, plaintext: bytes) -> bytes:
        """Seal a stored record (a notification body, an event payload) bound to its id."""
        context = f"fdpush/{kind}/v1\x00{record_id}".encode()
        return crypto.seal_at_rest(self._master_key, plaintext, context)

    def open_record(self, kind: str, record_id: str, blob: bytes) -> bytes:
        context = f"fdpush/{kind}/v1\x00{record_id}".encode()
        return crypto.unseal_at_rest(self._master_key, blob, context)


RETENTION_MONTHS = 2  # concept: secrets and keys older than two months are deleted


@dataclass(frozen=True, slots=True)
class Advance:
    """A pusher's key schedule brought to a month: the generation to seal with, and the change
    to persist *before* it is used (new generations sealed at rest; expired months to delete)."""

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
    """The generation for ``period`` of the pusher ``owner`` = (user_id, app_id, pushkey).

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
