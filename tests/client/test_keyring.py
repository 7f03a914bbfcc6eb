"""The client kit's keyring (docs/client-kit.md): what the app keeps, opens and refuses.

Notifications here are sealed by the service's own sender path (``fdpush.crypto``: the month
ratchet from the registration's iss, the frame, AES-256-GCM) — what the kit must open — and
the refusals are the ones an app must make: another keyring's notification, a month no longer
kept, a month far in the future, a tampered ciphertext, a bad frame.
"""

from __future__ import annotations

import base64
import os
import stat
from datetime import datetime
from pathlib import Path
from zoneinfo import ZoneInfo

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fdpush import crypto
from fdpush.client import (
    BadFrame,
    KeyExpired,
    Keyring,
    KeyringError,
    KeyringFileError,
    MalformedNotification,
    MonthTooFarAhead,
    TamperedCiphertext,
    UnknownKeyIdentifier,
)

BERLIN = ZoneInfo("Europe/Berlin")
VECTOR_ISS = bytes.fromhex("f2ca1bb6c7e907d06dafe4687e579fce76b37e4e93b7605022da52e6ccc26fd2")
KEY_2023_10 = "3b4adcd58dea98db8e9cb0f5763fcd04fe932d67926cc04b20ba2a2f304ffff9"
KEY_2023_11 = "39aa5dacd538f53f4b956d84c9b8f2e26933274d160b9fd1a263a27681c6331b"


def month_start(month: str) -> datetime:
    """Noon on the 15th of ``month`` in Berlin: a moment well inside it."""
    year, mon = (int(part) for part in month.split("-"))
    return datetime(year, mon, 15, 12, tzinfo=BERLIN)


def months_later(month: str, steps: int) -> str:
    year, mon = (int(part) for part in month.split("-"))
    index = year * 12 + mon - 1 + steps
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def server_seal(iss: bytes, iss_month: str, month: str, payload: dict) -> str:
    """What the Fachdienst sends in ``month`` to a device registered with ``iss``."""
    first = crypto.derive_generation(iss, iss_month)
    generations = [first, *crypto.ratchet(first, month)]
    return crypto.seal_notification(generations[-1].key, orjson.dumps(payload))


def keyring_at(month: str, iss: bytes | None = None) -> tuple[Keyring, bytes]:
    iss = iss or os.urandom(32)
    return Keyring.from_iss(iss, month, "8e2fe5b1-4c3f-4ad6-9a3e-6f3f7d8e1a20"), iss


# --- making a keyring ----------------------------------------------------------------------------


def test_a_new_keyring_has_a_fresh_iss_this_month_and_a_uuid() -> None:
    now = datetime(2026, 3, 31, 23, 30, tzinfo=BERLIN)  # still March in Berlin
    one, two = Keyring.create(now=now), Keyring.create(now=now)
    block = one.encryption()
    assert block["method"] == "aes-hmac-sha256"
    assert block["time_iss_created"] == "2026-03"
    assert len(bytes.fromhex(block["iss"])) == 32
    assert block["iss"] != two.encryption()["iss"]
    assert block["key_identifier"] != two.encryption()["key_identifier"]
    assert len(block["key_identifier"]) == 36 and block["key_identifier"].count("-") == 4


def test_the_seed_spelling_names_the_month_initial_key_period() -> None:
    keyring, iss = keyring_at("2025-01")
    assert keyring.encryption("seed") == {
        "method": "aes-hmac-sha256",
        "iss": iss.hex(),
        "initial_key_period": "2025-01",
        "key_identifier": keyring.key_identifier,
    }


def test_the_keyring_derives_the_concepts_test_vector() -> None:
    keyring, _ = keyring_at("2023-10", VECTOR_ISS)
    iv = bytes(12)
    october = crypto.seal_notification(bytes.fromhex(KEY_2023_10), b'{"m":10}', iv)
    november = crypto.seal_notification(bytes.fromhex(KEY_2023_11), b'{"m":11}', iv)
    now = month_start("2023-11")
    assert keyring.decrypt(october, "2023-10", keyring.key_identifier, now=now) == {"m": 10}
    assert keyring.decrypt(november, "2023-11", keyring.key_identifier, now=now) == {"m": 11}
    assert keyring.months == ("2023-10", "2023-11")


def test_once_forgotten_the_iss_cannot_be_sent_again() -> None:
    keyring, _ = keyring_at("2025-01")
    keyring.forget_iss()
    assert not keyring.holds_iss
    with pytest.raises(KeyringError, match="forgotten"):
        keyring.encryption()
    assert "iss=None" in repr(keyring)


def test_repr_never_shows_key_material() -> None:
    keyring, iss = keyring_at("2025-01")
    assert iss.hex() not in repr(keyring)
    assert "<held>" in repr(keyring)


# --- retention -----------------------------------------------------------------------------------


def test_advance_ratchets_over_skipped_months_and_keeps_two_months_back() -> None:
    keyring, iss = keyring_at("2025-01")
    keyring.advance(now=month_start("2025-06"))
    # 2025-01..03 are older than two months before June; the youngest is June.
    assert keyring.months == ("2025-04", "2025-05", "2025-06")
    ciphertext = server_seal(iss, "2025-01", "2025-04", {"k": "april"})
    opened = keyring.decrypt(
        ciphertext, "2025-04", keyring.key_identifier, now=month_start("2025-06")
    )
    assert opened == {"k": "april"}


def test_the_youngest_generation_is_kept_however_old() -> None:
    keyring, iss = keyring_at("2024-01")
    ciphertext = server_seal(iss, "2024-01", "2025-09", {"late": True})
    # A year later nothing was opened in between: only the youngest (2024-01) remains, and the
    # chain continues from it.
    assert keyring.decrypt(
        ciphertext, "2025-09", keyring.key_identifier, now=month_start("2025-09")
    ) == {"late": True}
    assert keyring.months == ("2025-07", "2025-08", "2025-09")


def test_a_month_older_than_what_is_kept_is_key_expired() -> None:
    keyring, iss = keyring_at("2025-01")
    old = server_seal(iss, "2025-01", "2025-02", {"k": 1})
    keyring.advance(now=month_start("2025-06"))
    with pytest.raises(KeyExpired, match="2025-02"):
        keyring.decrypt(old, "2025-02", keyring.key_identifier, now=month_start("2025-06"))


def test_a_month_before_the_iss_is_key_expired() -> None:
    keyring, _ = keyring_at("2025-05")
    with pytest.raises(KeyExpired):
        keyring.decrypt("x" * 1404, "2025-04", keyring.key_identifier, now=month_start("2025-05"))


def test_next_month_is_clock_skew_but_two_ahead_is_refused() -> None:
    keyring, iss = keyring_at("2025-05")
    now = month_start("2025-05")
    early = server_seal(iss, "2025-05", "2025-06", {"skew": 1})
    assert keyring.decrypt(early, "2025-06", keyring.key_identifier, now=now) == {"skew": 1}
    far = server_seal(iss, "2025-05", "2025-08", {"skew": 3})
    with pytest.raises(MonthTooFarAhead):
        keyring.decrypt(far, "2025-08", keyring.key_identifier, now=now)
    assert keyring.months == ("2025-05", "2025-06")


def test_a_forged_notification_does_not_move_the_keyring_forward() -> None:
    keyring, _ = keyring_at("2025-05")
    forged = base64.b64encode(os.urandom(1052)).decode()
    with pytest.raises(TamperedCiphertext):
        keyring.decrypt(forged, "2025-06", keyring.key_identifier, now=month_start("2025-05"))
    assert keyring.months == ("2025-05",)


# --- refusals ------------------------------------------------------------------------------------


def test_another_key_identifier_is_refused() -> None:
    keyring, iss = keyring_at("2025-05")
    ciphertext = server_seal(iss, "2025-05", "2025-05", {"a": 1})
    with pytest.raises(UnknownKeyIdentifier):
        keyring.decrypt(ciphertext, "2025-05", "another-id", now=month_start("2025-05"))


def test_a_notification_for_another_iss_is_tampered() -> None:
    keyring, _ = keyring_at("2025-05")
    ciphertext = server_seal(os.urandom(32), "2025-05", "2025-05", {"a": 1})
    with pytest.raises(TamperedCiphertext):
        keyring.decrypt(ciphertext, "2025-05", keyring.key_identifier, now=month_start("2025-05"))


@pytest.mark.parametrize(
    "ciphertext",
    [
        "",
        "A" * 1403,
        "A" * 1405,
        "!" * 1404,
        base64.urlsafe_b64encode(b"\xfb" * 1052).decode(),  # the URL-safe alphabet
    ],
    ids=["empty", "short", "long", "not-base64", "urlsafe"],
)
def test_malformed_ciphertexts_are_tampered(ciphertext: str) -> None:
    keyring, _ = keyring_at("2025-05")
    with pytest.raises(TamperedCiphertext):
        keyring.decrypt(ciphertext, "2025-05", keyring.key_identifier, now=month_start("2025-05"))


def _seal_raw(key: bytes, framed: bytes) -> str:
    iv = os.urandom(12)
    return base64.b64encode(iv + AESGCM(key).encrypt(iv, framed, None)).decode()


@pytest.mark.parametrize(
    "framed",
    [
        b"PNM2" + (1018 - 2).to_bytes(2, "big") + bytes(1016) + b"{}",
        b"PNM1" + (1019).to_bytes(2, "big") + bytes(1018),
    ],
    ids=["magic", "padding-length"],
)
def test_an_authentic_ciphertext_with_a_bad_frame_is_bad_frame(framed: bytes) -> None:
    keyring, iss = keyring_at("2025-05")
    key = crypto.derive_generation(iss, "2025-05").key
    with pytest.raises(BadFrame):
        keyring.decrypt(
            _seal_raw(key, framed), "2025-05", keyring.key_identifier, now=month_start("2025-05")
        )


@pytest.mark.parametrize("payload", [b"not json", b"[1, 2]", b'"text"'])
def test_a_payload_that_is_not_a_json_object_is_malformed(payload: bytes) -> None:
    keyring, iss = keyring_at("2025-05")
    key = crypto.derive_generation(iss, "2025-05").key
    ciphertext = crypto.seal_notification(key, payload)
    with pytest.raises(MalformedNotification):
        keyring.decrypt(ciphertext, "2025-05", keyring.key_identifier, now=month_start("2025-05"))


@pytest.mark.parametrize("month", ["2025-5", "2025-13", "25-05", "", "2025-05-01"])
def test_a_month_not_of_the_form_yyyy_mm_is_malformed(month: str) -> None:
    keyring, _ = keyring_at("2025-05")
    with pytest.raises(MalformedNotification):
        keyring.decrypt("x" * 1404, month, keyring.key_identifier, now=month_start("2025-05"))


# --- pushes as they arrive -----------------------------------------------------------------------


def test_open_push_reads_apns_fcm_and_bare_fields() -> None:
    keyring, iss = keyring_at("2025-05")
    now = month_start("2025-05")
    fields = {
        "ciphertext": server_seal(iss, "2025-05", "2025-05", {"via": "push"}),
        "time_message_encrypted": "2025-05",
        "key_identifier": keyring.key_identifier,
    }
    apns = {"aps": {"alert": {"title": "New"}, "mutable-content": 1}, **fields}
    apns_record = {"device_token": "t", "headers": {}, "payload": apns}
    fcm = {"message": {"token": "t", "data": fields, "android": {"priority": "HIGH"}}}
    for push in (apns, apns_record, fcm, fcm["message"], fields):
        assert keyring.open_push(push, now=now) == {"via": "push"}
    with pytest.raises(MalformedNotification, match="key_identifier"):
        keyring.open_push({"ciphertext": "x", "time_message_encrypted": "2025-05"}, now=now)


# --- on disk -------------------------------------------------------------------------------------


def test_a_saved_keyring_is_owner_only_and_loads_the_same(tmp_path: Path) -> None:
    keyring, iss = keyring_at("2025-01")
    keyring.advance(now=month_start("2025-03"))
    path = tmp_path / "keyring.json"
    keyring.save(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    loaded = Keyring.load(path)
    assert loaded.months == keyring.months
    assert loaded.key_identifier == keyring.key_identifier
    assert loaded.encryption() == keyring.encryption()
    ciphertext = server_seal(iss, "2025-01", "2025-03", {"saved": True})
    assert loaded.decrypt(
        ciphertext, "2025-03", loaded.key_identifier, now=month_start("2025-03")
    ) == {"saved": True}
    keyring.forget_iss()
    keyring.save(path)  # replaced in place
    assert iss.hex() not in path.read_text()
    assert not Keyring.load(path).holds_iss
    assert list(tmp_path.iterdir()) == [path]  # no temporary file left behind


def test_unusable_keyring_files_are_refused(tmp_path: Path) -> None:
    keyring, _ = keyring_at("2025-01")
    path = tmp_path / "keyring.json"
    keyring.save(path)
    path.chmod(0o644)
    with pytest.raises(KeyringFileError, match="readable by others"):
        Keyring.load(path)
    with pytest.raises(KeyringFileError):
        Keyring.load(tmp_path / "missing.json")
    for content in (b"not json", b"{}", b'{"version": 1, "generations": []}', b"[]"):
        bad = tmp_path / f"bad-{len(content)}.json"
        bad.write_bytes(content)
        bad.chmod(0o600)
        with pytest.raises(KeyringFileError):
            Keyring.load(bad)


# --- properties ----------------------------------------------------------------------------------

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=40),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4)
    ),
    max_leaves=20,
)
_payloads = st.dictionaries(st.text(max_size=16), _json_values, max_size=6).filter(
    lambda p: len(orjson.dumps(p)) <= crypto.MAX_PAYLOAD_BYTES
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    payload=_payloads,
    iss=st.binary(min_size=32, max_size=32),
    start=st.integers(0, 12 * 80 - 1),
    skipped=st.integers(0, 30),
    behind=st.integers(0, 2),
)
def test_what_the_sender_seals_the_kit_opens(
    payload: dict, iss: bytes, start: int, skipped: int, behind: int
) -> None:
    """For any payload, iss month and number of skipped months, the service's sealing in month
    M opens in a keyring registered with that iss, whether the device is in month M, or the
    message is up to two months old and the keyring has moved on."""
    iss_month = months_later("2000-01", start)
    month = months_later(iss_month, skipped)
    ciphertext = server_seal(iss, iss_month, month, payload)
    keyring, _ = keyring_at(iss_month, iss)
    device_month = months_later(month, behind)
    keyring.advance(now=month_start(device_month))
    opened = keyring.decrypt(
        ciphertext, month, keyring.key_identifier, now=month_start(device_month)
    )
    assert opened == payload


def test_every_single_bit_flip_of_a_ciphertext_is_refused() -> None:
    """Each of the 8,416 bits of IV ‖ ciphertext ‖ tag, and each bit of each of the 1,404
    characters as transmitted: flipped alone, the notification does not open."""
    keyring, iss = keyring_at("2025-05")
    now = month_start("2025-05")
    ciphertext = server_seal(iss, "2025-05", "2025-05", {"ChannelId": "erp.task.activate"})
    assert keyring.decrypt(ciphertext, "2025-05", keyring.key_identifier, now=now)
    raw = base64.b64decode(ciphertext)
    for bit in range(len(raw) * 8):
        flipped = bytearray(raw)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(TamperedCiphertext):
            keyring.decrypt(
                base64.b64encode(flipped).decode(), "2025-05", keyring.key_identifier, now=now
            )
    text = ciphertext.encode("ascii")
    for bit in range(len(text) * 8):
        flipped = bytearray(text)
        flipped[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(KeyringError):
            keyring.decrypt(flipped.decode("latin-1"), "2025-05", keyring.key_identifier, now=now)


def test_another_text_for_the_same_bytes_is_refused() -> None:
    """1052 bytes end in a Base64 group with two unused bits: setting them gives another text
    that lax decoders map to the same bytes. The kit refuses it, so no change to the text as
    transmitted goes unnoticed."""
    keyring, iss = keyring_at("2025-05")
    now = month_start("2025-05")
    ciphertext = server_seal(iss, "2025-05", "2025-05", {"a": 1})
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = alphabet.index(ciphertext[-2])  # the character before the one "="
    for unused in (1, 2, 3):
        variant = ciphertext[:-2] + alphabet[last | unused] + "="
        assert base64.b64decode(variant) == base64.b64decode(ciphertext)
        with pytest.raises(TamperedCiphertext, match="canonical"):
            keyring.decrypt(variant, "2025-05", keyring.key_identifier, now=now)
