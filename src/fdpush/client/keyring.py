"""The app's keys for one Fachdienst: the initial shared secret, the month generations, opening.

One :class:`Keyring` belongs to one app installation at one Fachdienst. It makes the fresh
initial shared secret (iss), the month it was created and a random ``key_identifier`` that the
app sends with its registration; it derives the same month generations as the Fachdienst
(concept: ``HKDF-SHA256(ikm, info="YYYY-MM", L=64)``, the first month from the iss, each later
month from the previous month's secret) and keeps them under the concept's retention (older
than two months: deleted, never the youngest); and it opens what arrives in an APNs or FCM
push: ``ciphertext``, ``time_message_encrypted``, ``key_identifier``.

Everything the concept's rules refuse comes back as a :class:`KeyringError` subclass, so an
app can tell a notification for another keyring from a tampered one::

    keyring = Keyring.create()
    client.register_pusher(..., keyring=keyring)       # sends keyring.encryption(), then
    keyring.save(path)                                  # forgets the iss; saved owner-only
    ...
    payload = keyring.open_push(apns_payload)           # {"ChannelId": ..., ...}
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
import uuid
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import orjson

from fdpush import crypto
from fdpush.domain.keys import current_period

__all__ = [
    "BadFrame",
    "KeyExpired",
    "Keyring",
    "KeyringError",
    "KeyringFileError",
    "MalformedNotification",
    "MonthTooFarAhead",
    "TamperedCiphertext",
    "UnknownKeyIdentifier",
]

RETENTION_MONTHS = 2  # concept: keys older than two months are deleted, never the youngest
MAX_MONTHS_AHEAD = 1  # a month past this, relative to the device's month, is refused
_FILE_VERSION = 1
_KEY_IDENTIFIER = re.compile(r"^[\x21-\x7e]{1,128}$")  # what the Fachdienst accepts


class KeyringError(Exception):
    """A notification (or keyring file) that this keyring refuses; the message says why."""


class UnknownKeyIdentifier(KeyringError):
    """The notification names another ``key_identifier``: it is for another keyring."""


class KeyExpired(KeyringError):
    """The notification's month is older than every generation this keyring still keeps."""


class MonthTooFarAhead(KeyringError):
    """The notification's month lies further ahead of the device's month than any clock skew."""


class TamperedCiphertext(KeyringError):
    """The ciphertext is malformed or does not authenticate: changed, truncated or forged."""


class BadFrame(KeyringError):
    """The ciphertext authenticates but its plaintext is not a ``PNM1`` frame of 1024 bytes."""


class MalformedNotification(KeyringError):
    """A field is missing or of the wrong form, or the payload is not a JSON object."""


class KeyringFileError(KeyringError):
    """A keyring file that cannot be used (unreadable, readable by others, not a keyring)."""


class Keyring:
    """The keys of one app installation at one Fachdienst (see the module docstring).

    Not thread-safe: opening a notification may ratchet (and so change) the keyring.
    """

    def __init__(
        self,
        *,
        key_identifier: str,
        time_iss_created: str,
        generations: Mapping[str, crypto.KeyGeneration],
        iss: bytes | None = None,
    ) -> None:
        """A keyring from its parts (use :meth:`create` or :meth:`load`); ValueError if unusable."""
        crypto.parse_period(time_iss_created)
        if not _KEY_IDENTIFIER.fullmatch(key_identifier):
            raise ValueError("key_identifier must be 1 to 128 printable ASCII characters")
        if not generations:
            raise ValueError("a keyring holds at least one generation")
        if iss is not None and len(iss) != 32:
            raise ValueError("the iss is 32 bytes")
        periods = sorted(generations)
        for earlier, later in itertools.pairwise(periods):
            if crypto.next_period(earlier) != later:
                raise ValueError("the generations must be consecutive months")
        self.key_identifier = key_identifier
        self.time_iss_created = time_iss_created
        self._generations = {p: generations[p] for p in periods}
        self._iss = iss

    def __repr__(self) -> str:  # never key material, not even in a traceback
        return (
            f"Keyring(key_identifier={self.key_identifier!r}, "
            f"months={list(self._generations)!r}, iss={'<held>' if self._iss else None})"
        )

    # --- making one ------------------------------------------------------------------------

    @classmethod
    def create(cls, *, now: datetime | None = None) -> Keyring:
        """A fresh keyring: 32 random bytes of iss, this month (Berlin), a random UUID."""
        iss = secrets.token_bytes(32)
        month = current_period(now)
        return cls(
            key_identifier=str(uuid.uuid4()),
            time_iss_created=month,
            generations={month: crypto.derive_generation(iss, month)},
            iss=iss,
        )

    @classmethod
    def from_iss(cls, iss: bytes, time_iss_created: str, key_identifier: str) -> Keyring:
        """The keyring for a known iss (an app restoring one, a test with a fixed vector)."""
        return cls(
            key_identifier=key_identifier,
            time_iss_created=time_iss_created,
            generations={time_iss_created: crypto.derive_generation(iss, time_iss_created)},
            iss=iss,
        )

    def encryption(self, spelling: Literal["current", "seed"] = "current") -> dict[str, str]:
        """The ``encryption`` block of a registration, in the current or the seed spelling.

        Raises :class:`KeyringError` once the iss was forgotten: a new registration needs a new
        keyring (the spec: a key_identifier is never reused for another iss).
        """
        if self._iss is None:
            raise KeyringError("this keyring's iss was forgotten: register with a new keyring")
        month_field = "time_iss_created" if spelling == "current" else "initial_key_period"
        return {
            "method": crypto.METHOD,
            "iss": self._iss.hex(),
            month_field: self.time_iss_created,
            "key_identifier": self.key_identifier,
        }

    def forget_iss(self) -> None:
        """Drop the iss (after a successful registration, it is needed no more)."""
        self._iss = None

    @property
    def holds_iss(self) -> bool:
        return self._iss is not None

    @property
    def months(self) -> tuple[str, ...]:
        """The months whose keys are kept, oldest first."""
        return tuple(self._generations)

    # --- the month ratchet -----------------------------------------------------------------

    def advance(self, *, now: datetime | None = None) -> None:
        """Ratchet to the current month (Berlin) and drop what the retention no longer keeps."""
        month = current_period(now)
        self._generations.update(self._ratcheted(month))
        self._prune(month)

    def _ratcheted(self, month: str) -> dict[str, crypto.KeyGeneration]:
        youngest = self._generations[next(reversed(self._generations))]
        return {g.period: g for g in crypto.ratchet(youngest, month)}

    def _prune(self, month: str) -> None:
        youngest = next(reversed(self._generations))
        for period in list(self._generations):
            if period != youngest and crypto.periods_between(period, month) > RETENTION_MONTHS:
                del self._generations[period]

    # --- opening ---------------------------------------------------------------------------

    def decrypt(
        self,
        ciphertext: str,
        time_message_encrypted: str,
        key_identifier: str,
        *,
        now: datetime | None = None,
    ) -> dict[str, Any]:
        """The payload of a received notification; a :class:`KeyringError` subclass if refused.

        A month newer than the youngest kept generation is derived (skipped months in
        sequence) and kept — but only once the notification has authenticated, so a forged
        one cannot move the keyring forward.
        """
        if key_identifier != self.key_identifier:
            raise UnknownKeyIdentifier("the notification is for another key_identifier")
        try:
            crypto.parse_period(time_message_encrypted)
        except crypto.CryptoError as exc:
            raise MalformedNotification(f"time_message_encrypted: {exc}") from None
        today = current_period(now)
        self._prune(today)  # time passes whether or not this notification opens
        if crypto.periods_between(today, time_message_encrypted) > MAX_MONTHS_AHEAD:
            raise MonthTooFarAhead(
                f"the notification is for {time_message_encrypted}, but it is {today} here"
            )
        generation = self._generations.get(time_message_encrypted)
        derived: dict[str, crypto.KeyGeneration] = {}
        if generation is None:
            oldest = next(iter(self._generations))
            if crypto.periods_between(oldest, time_message_encrypted) < 0:
                raise KeyExpired(
                    f"no key for {time_message_encrypted} is kept (the oldest is for {oldest})"
                )
            derived = self._ratcheted(time_message_encrypted)
            generation = derived[time_message_encrypted]
        try:
            plain = crypto.open_notification(generation.key, ciphertext)
        except crypto.FrameError as exc:
            raise BadFrame(str(exc)) from None
        except crypto.CryptoError as exc:
            raise TamperedCiphertext(str(exc)) from None
        try:
            payload = orjson.loads(plain)
        except orjson.JSONDecodeError:
            raise MalformedNotification("the payload is not JSON") from None
        if not isinstance(payload, dict):
            raise MalformedNotification("the payload is not a JSON object")
        if derived:
            self._generations.update(derived)
            self._prune(max(today, time_message_encrypted))
        return payload

    def open_push(
        self, message: Mapping[str, Any], *, now: datetime | None = None
    ) -> dict[str, Any]:
        """Open a push as the app receives it: an APNs payload (the encrypted fields as custom
        keys beside ``aps``), an FCM message (``message.data`` or ``data``), or the bare fields.
        """
        fields: Any = message
        if "message" in fields and isinstance(fields["message"], Mapping):
            fields = fields["message"]
        if "payload" in fields and isinstance(fields["payload"], Mapping):
            fields = fields["payload"]
        if "data" in fields and isinstance(fields["data"], Mapping):
            fields = fields["data"]
        values = []
        for name in ("ciphertext", "time_message_encrypted", "key_identifier"):
            value = fields.get(name)
            if not isinstance(value, str):
                raise MalformedNotification(f"the push has no {name}")
            values.append(value)
        return self.decrypt(*values, now=now)

    # --- on disk ---------------------------------------------------------------------------

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the keyring to ``path`` (owner-only, replaced atomically)."""
        target = Path(path)
        document = {
            "version": _FILE_VERSION,
            "key_identifier": self.key_identifier,
            "time_iss_created": self.time_iss_created,
            "iss": None if self._iss is None else self._iss.hex(),
            "generations": [
                {"month": g.period, "secret": g.secret.hex(), "key": g.key.hex()}
                for g in self._generations.values()
            ],
        }
        temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "wb") as handle:
                handle.write(orjson.dumps(document, option=orjson.OPT_INDENT_2))
                handle.flush()
                os.fsync(handle.fileno())
            os.replace(temporary, target)
        except BaseException:
            temporary.unlink(missing_ok=True)
            raise

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> Keyring:
        """Read a keyring written by :meth:`save`; :class:`KeyringFileError` if unusable."""
        source = Path(path)
        try:
            if source.stat().st_mode & 0o077:
                raise KeyringFileError(f"{source} is readable by others; run: chmod 600 {source}")
            document = orjson.loads(source.read_bytes())
        except OSError as exc:
            raise KeyringFileError(f"{source}: {exc.strerror or exc}") from None
        except orjson.JSONDecodeError:
            raise KeyringFileError(f"{source} is not JSON") from None
        try:
            if document["version"] != _FILE_VERSION:
                raise KeyringFileError(f"{source}: unknown keyring version {document['version']}")
            iss = document["iss"]
            generations = {
                g["month"]: crypto.KeyGeneration(
                    g["month"], bytes.fromhex(g["secret"]), bytes.fromhex(g["key"])
                )
                for g in document["generations"]
            }
            if any(len(g.secret) != 32 or len(g.key) != 32 for g in generations.values()):
                raise ValueError("keys are 32 bytes")
            return cls(
                key_identifier=document["key_identifier"],
                time_iss_created=document["time_iss_created"],
                generations=generations,
                iss=None if iss is None else bytes.fromhex(iss),
            )
        except KeyringFileError:
            raise
        except (KeyError, TypeError, ValueError) as exc:
            raise KeyringFileError(f"{source} is not a keyring file: {exc}") from None
