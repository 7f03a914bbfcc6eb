"""The concept's cryptography (``fdpush.crypto``, ``fdpush.domain.keys``), checked on its own.

Key schedule, notification framing and sealing, sealing at rest, and the month a key belongs to.
The test vector comes from the concept; the key schedule is also checked against an HKDF written
here from RFC 5869 with nothing but ``hmac`` and ``hashlib``, so it does not rest on the
``cryptography`` package alone.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from hypothesis import given, settings
from hypothesis import strategies as st

from fdpush import crypto
from fdpush.crypto import CryptoError, KeyGeneration
from fdpush.domain.keys import Advance, KeyVault, current_period

# docs/concept.md, "Sealing" (the test vector).
ISS = bytes.fromhex("f2ca1bb6c7e907d06dafe4687e579fce76b37e4e93b7605022da52e6ccc26fd2")
OCT_SECRET = "185fed66ea5cabbe00147bbd298b5dab0ed41b57ab254d35897b3a4504306e3b"
OCT_KEY = "3b4adcd58dea98db8e9cb0f5763fcd04fe932d67926cc04b20ba2a2f304ffff9"
NOV_SECRET = "0c8662d90b04818afb317406fe7fcfcf8d103cd9bc6ad7847890d28620e85ec3"
NOV_KEY = "39aa5dacd538f53f4b956d84c9b8f2e26933274d160b9fd1a263a27681c6331b"

KEY = bytes(range(32))
STANDARD_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}")
SEALED_BYTES = 12 + 1024 + 16

periods = st.builds(
    lambda year, month: f"{year:04d}-{month:02d}",
    st.integers(min_value=2000, max_value=2999),
    st.integers(min_value=1, max_value=12),
)
payloads = st.binary(min_size=0, max_size=crypto.MAX_PAYLOAD_BYTES)


def rfc5869_hkdf_sha256(ikm: bytes, info: bytes, length: int) -> bytes:
    """HKDF-SHA256 from RFC 5869 §2.2/2.3, with "salt not provided" = HashLen zero bytes."""
    prk = hmac.new(b"\x00" * hashlib.sha256().digest_size, ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


# --- key schedule ------------------------------------------------------------------------------


def test_concept_test_vector_for_the_first_month() -> None:
    """iss + time_iss_created 2023-10 gives the concept's secret and key."""
    generation = crypto.derive_generation(ISS, "2023-10")
    assert generation.period == "2023-10"
    assert generation.secret.hex() == OCT_SECRET
    assert generation.key.hex() == OCT_KEY


def test_concept_test_vector_ratchets_to_the_next_month() -> None:
    """The following month uses the previous month's secret as ikm and its own month as info."""
    october = crypto.derive_generation(ISS, "2023-10")
    [november] = crypto.ratchet(october, "2023-11")
    assert november.period == "2023-11"
    assert november.secret.hex() == NOV_SECRET
    assert november.key.hex() == NOV_KEY


def test_test_vector_holds_under_an_independent_rfc5869_hkdf() -> None:
    """The vector is the plain RFC 5869 HKDF, not an artefact of one library."""
    october = rfc5869_hkdf_sha256(ISS, b"2023-10", 64)
    assert october.hex() == OCT_SECRET + OCT_KEY
    november = rfc5869_hkdf_sha256(october[:32], b"2023-11", 64)
    assert november.hex() == NOV_SECRET + NOV_KEY


@settings(max_examples=50, deadline=None)
@given(ikm=st.binary(min_size=32, max_size=32), period=periods)
def test_derivation_is_rfc5869_hkdf_with_the_month_as_info(ikm: bytes, period: str) -> None:
    """secret ‖ key = HKDF-SHA256(ikm, salt none, info "YYYY-MM", L=64) for any input."""
    generation = crypto.derive_generation(ikm, period)
    assert generation.secret + generation.key == rfc5869_hkdf_sha256(ikm, period.encode(), 64)


def test_ratchet_over_skipped_months_equals_deriving_month_by_month() -> None:
    """Skipped months are derived in sequence: one jump equals many single steps."""
    start = crypto.derive_generation(ISS, "2023-10")
    jumped = crypto.ratchet(start, "2024-03")
    assert [g.period for g in jumped] == [
        "2023-11",
        "2023-12",
        "2024-01",
        "2024-02",
        "2024-03",
    ]
    stepped, current = [], start
    for period in ("2023-11", "2023-12", "2024-01", "2024-02", "2024-03"):
        current = crypto.derive_generation(current.secret, period)
        stepped.append(current)
    assert jumped == stepped
    assert jumped[0].secret.hex() == NOV_SECRET


def test_ratchet_crosses_the_year_boundary() -> None:
    """December is followed by January of the next year, with "2024-01" as info."""
    assert crypto.next_period("2023-12") == "2024-01"
    assert crypto.periods_between("2023-12", "2024-01") == 1
    december = crypto.derive_generation(ISS, "2023-12")
    [january] = crypto.ratchet(december, "2024-01")
    assert january.period == "2024-01"
    assert january.secret + january.key == rfc5869_hkdf_sha256(december.secret, b"2024-01", 64)


@pytest.mark.parametrize("target", ["2023-10", "2023-09", "2022-12"])
def test_ratchet_never_goes_backwards(target: str) -> None:
    """Nothing is derived for the same or an earlier month."""
    assert crypto.ratchet(crypto.derive_generation(ISS, "2023-10"), target) == []


@pytest.mark.parametrize(
    "period",
    [
        "",
        "2023-1",
        "2023-001",
        "23-10",
        "2023-00",
        "2023-13",
        "2023/10",
        "2023-10-01",
        " 2023-10",
        "2023-10 ",
        "2023-10\n",
        "+023-10",
        "\u0662\u0660\u0662\u0663-10",  # Arabic-Indic digits: \d would match them
        "\uff12\uff10\uff12\uff13-10",  # fullwidth digits
    ],
)
def test_period_parsing_refuses_anything_but_yyyy_mm(period: str) -> None:
    """A month is exactly YYYY-MM in ASCII digits, 01..12; everything else is CryptoError."""
    with pytest.raises(CryptoError):
        crypto.parse_period(period)
    with pytest.raises(CryptoError):
        crypto.derive_generation(ISS, period)


@pytest.mark.parametrize("size", [0, 31, 33, 64])
def test_derivation_refuses_ikm_that_is_not_256_bits(size: int) -> None:
    with pytest.raises(CryptoError):
        crypto.derive_generation(bytes(size), "2023-10")


# --- the PNM1 frame ----------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 500, 1018])
def test_frame_is_always_1024_bytes_with_pnm1_header_and_padding_length(size: int) -> None:
    """PNM1 ‖ n (2 bytes, big endian) ‖ n spaces ‖ payload, hiding the payload's length."""
    payload = os.urandom(size)
    framed = crypto.frame(payload)
    padding = 1018 - size
    assert len(framed) == crypto.FRAME_LENGTH == 1024
    assert framed[:4] == b"PNM1"
    assert framed[4:6] == padding.to_bytes(2, "big")
    assert framed[6 : 6 + padding] == b" " * padding  # gemF A_27610: spaces, not zero bytes
    assert framed[6 + padding :] == payload
    assert crypto.unframe(framed) == payload


# The apps' framing (gemF A_27610, as the published E-Rezept apps frame): for this payload the
# frame is "PNM1", 0x03 0xE8 (1000 paddings), 1000 spaces, then the 18 payload bytes.
APP_PAYLOAD = b'{"ChannelId":"x1"}'
APP_FRAME = b"PNM1\x03\xe8" + b"\x20" * 1000 + APP_PAYLOAD


def test_frame_matches_the_apps_framing() -> None:
    assert len(APP_PAYLOAD) == 18 and len(APP_FRAME) == 1024
    assert crypto.frame(APP_PAYLOAD) == APP_FRAME


def test_unframe_accepts_zero_padding_of_older_senders() -> None:
    older = b"PNM1\x03\xe8" + bytes(1000) + APP_PAYLOAD
    assert crypto.unframe(older) == APP_PAYLOAD


def test_a_sealed_app_frame_opens_with_plain_aes_gcm() -> None:
    """Known answer: the 2023-10 key of the concept's test vector, a fixed IV, the apps' frame."""
    iv = bytes(range(12))
    sealed = crypto.seal_notification(bytes.fromhex(OCT_KEY), APP_PAYLOAD, iv=iv)
    raw = base64.b64decode(sealed)
    assert raw[:12] == iv
    assert AESGCM(bytes.fromhex(OCT_KEY)).decrypt(iv, raw[12:], None) == APP_FRAME


def test_frame_holds_at_most_1018_payload_bytes() -> None:
    assert crypto.MAX_PAYLOAD_BYTES == 1018
    with pytest.raises(CryptoError):
        crypto.frame(bytes(1019))
    with pytest.raises(CryptoError):
        crypto.seal_notification(KEY, bytes(1019))


@pytest.mark.parametrize(
    "framed",
    [
        b"",
        b"PNM1" + (1018).to_bytes(2, "big") + bytes(1017),  # 1023 bytes
        crypto.frame(b"x") + b"\x00",  # 1025 bytes
        b"PNM2" + crypto.frame(b"x")[4:],  # wrong magic
        b"PNM1" + (1019).to_bytes(2, "big") + bytes(1018),  # padding longer than the frame
        b"PNM1" + (0xFFFF).to_bytes(2, "big") + bytes(1018),
    ],
    ids=["empty", "short", "long", "magic", "padding-1019", "padding-65535"],
)
def test_unframe_refuses_a_bad_frame(framed: bytes) -> None:
    with pytest.raises(CryptoError):
        crypto.unframe(framed)


# --- sealing notifications ---------------------------------------------------------------------


def test_sealed_notification_is_1404_characters_of_standard_base64() -> None:
    """Base64(IV ‖ ciphertext ‖ tag) of a 1024-byte frame: 12 + 1024 + 16 bytes, 1404 chars."""
    ciphertext = crypto.seal_notification(KEY, b'{"type":"erp.task.activate"}')
    assert len(ciphertext) == crypto.CIPHERTEXT_LENGTH == 1404
    assert STANDARD_BASE64.fullmatch(ciphertext)
    assert len(base64.b64decode(ciphertext, validate=True)) == SEALED_BYTES


def test_sealed_notification_opens_with_plain_aes_gcm() -> None:
    """The wire format is IV ‖ AES-256-GCM(frame) ‖ tag, no associated data: an app can open it."""
    payload = b'{"hello":"world"}'
    raw = base64.b64decode(crypto.seal_notification(KEY, payload))
    framed = AESGCM(KEY).decrypt(raw[:12], raw[12:], None)
    assert framed == crypto.frame(payload)


def test_given_iv_gives_a_reproducible_ciphertext() -> None:
    iv = bytes(range(12))
    first = crypto.seal_notification(KEY, b"payload", iv=iv)
    assert first == crypto.seal_notification(KEY, b"payload", iv=iv)
    assert base64.b64decode(first)[:12] == iv
    with pytest.raises(CryptoError):
        crypto.seal_notification(KEY, b"payload", iv=bytes(11))


def test_every_seal_draws_a_fresh_iv() -> None:
    """The same payload under the same key never gives the same ciphertext or IV twice."""
    sealed = [crypto.seal_notification(KEY, b"same payload") for _ in range(2)]
    assert sealed[0] != sealed[1]
    assert base64.b64decode(sealed[0])[:12] != base64.b64decode(sealed[1])[:12]


@settings(max_examples=100, deadline=None)
@given(payload=payloads, key=st.binary(min_size=32, max_size=32))
def test_seal_then_open_round_trips_any_payload(payload: bytes, key: bytes) -> None:
    """Any payload of 0..1018 bytes comes back unchanged, always in 1404 characters."""
    ciphertext = crypto.seal_notification(key, payload)
    assert len(ciphertext) == 1404
    assert crypto.open_notification(key, ciphertext) == payload


_SEALED = crypto.seal_notification(KEY, b'{"type":"erp.communication.new"}')


@settings(max_examples=200, deadline=None)
@given(bit=st.integers(min_value=0, max_value=SEALED_BYTES * 8 - 1))
def test_any_single_bit_flip_is_refused(bit: int) -> None:
    """IV, ciphertext or tag: flipping one bit anywhere makes the message not authenticate."""
    raw = bytearray(base64.b64decode(_SEALED))
    raw[bit // 8] ^= 1 << (bit % 8)
    with pytest.raises(CryptoError):
        crypto.open_notification(KEY, base64.b64encode(bytes(raw)).decode())


def test_wrong_key_is_refused() -> None:
    with pytest.raises(CryptoError):
        crypto.open_notification(bytes(32), _SEALED)


def test_next_months_key_does_not_open_this_months_message() -> None:
    october = crypto.derive_generation(ISS, "2023-10")
    [november] = crypto.ratchet(october, "2023-11")
    ciphertext = crypto.seal_notification(october.key, b"for october")
    assert crypto.open_notification(october.key, ciphertext) == b"for october"
    with pytest.raises(CryptoError):
        crypto.open_notification(november.key, ciphertext)


@pytest.mark.parametrize(
    "ciphertext",
    [
        "",
        _SEALED[:-4],  # too short
        _SEALED + "AAAA",  # too long
        "-" + _SEALED[1:],  # URL-safe alphabet
        "_" + _SEALED[1:],
        "!" * 1404,
        " " + _SEALED[1:],
    ],
    ids=["empty", "short", "long", "urlsafe-minus", "urlsafe-underscore", "not-base64", "space"],
)
def test_malformed_ciphertext_is_refused(ciphertext: str) -> None:
    with pytest.raises(CryptoError):
        crypto.open_notification(KEY, ciphertext)


def test_authentic_message_with_a_bad_frame_is_refused() -> None:
    """A well-sealed blob whose plaintext is not a PNM1 frame is still not a notification."""
    iv = os.urandom(12)
    not_a_frame = b"PNM0" + bytes(1020)
    ciphertext = base64.b64encode(iv + AESGCM(KEY).encrypt(iv, not_a_frame, None)).decode()
    assert len(ciphertext) == 1404
    with pytest.raises(CryptoError):
        crypto.open_notification(KEY, ciphertext)


# --- sealing at rest ---------------------------------------------------------------------------

MASTER = os.urandom(32)


def test_at_rest_round_trip() -> None:
    blob = crypto.seal_at_rest(MASTER, b"secret material", b"row 1")
    assert b"secret material" not in blob
    assert crypto.unseal_at_rest(MASTER, blob, b"row 1") == b"secret material"


def test_at_rest_blob_is_bound_to_its_context() -> None:
    """A blob copied to another row (another context) does not open."""
    blob = crypto.seal_at_rest(MASTER, b"secret material", b"row 1")
    with pytest.raises(CryptoError):
        crypto.unseal_at_rest(MASTER, blob, b"row 2")


def test_at_rest_blob_needs_the_same_master_key() -> None:
    blob = crypto.seal_at_rest(MASTER, b"secret material", b"row 1")
    with pytest.raises(CryptoError):
        crypto.unseal_at_rest(os.urandom(32), blob, b"row 1")


@pytest.mark.parametrize(
    "mangle",
    [
        lambda blob: b"",
        lambda blob: blob[:20],
        lambda blob: b"\x02" + blob[1:],  # unknown version
        lambda blob: blob[:-1] + bytes([blob[-1] ^ 1]),  # tag
        lambda blob: blob[:1] + bytes([blob[1] ^ 1]) + blob[2:],  # nonce
    ],
    ids=["empty", "truncated", "version", "tag", "nonce"],
)
def test_at_rest_refuses_mangled_blobs(mangle: Callable[[bytes], bytes]) -> None:
    blob = crypto.seal_at_rest(MASTER, b"secret material", b"row 1")
    with pytest.raises(CryptoError):
        crypto.unseal_at_rest(MASTER, mangle(blob), b"row 1")


def test_at_rest_sealing_draws_a_fresh_nonce() -> None:
    assert crypto.seal_at_rest(MASTER, b"same", b"ctx") != crypto.seal_at_rest(
        MASTER, b"same", b"ctx"
    )


def test_key_vault_binds_a_generation_to_its_pusher_and_month() -> None:
    """Sealed under the master key for (user, app_id, pushkey, month); any other row fails."""
    vault = KeyVault(MASTER)
    generation = crypto.derive_generation(ISS, "2023-10")
    sealed = vault.seal("alice", "de.app", "pk/1+=", generation)
    assert bytes.fromhex(OCT_SECRET) not in sealed
    assert bytes.fromhex(OCT_KEY) not in sealed
    assert vault.open("alice", "de.app", "pk/1+=", "2023-10", sealed) == generation
    for other in (
        ("bob", "de.app", "pk/1+=", "2023-10"),
        ("alice", "de.other", "pk/1+=", "2023-10"),
        ("alice", "de.app", "pk/2+=", "2023-10"),
        ("alice", "de.app", "pk/1+=", "2023-11"),
    ):
        with pytest.raises(CryptoError):
            vault.open(*other, sealed)
    with pytest.raises(CryptoError):
        KeyVault(os.urandom(32)).open("alice", "de.app", "pk/1+=", "2023-10", sealed)


def test_key_vault_seals_a_pushkey_bound_to_its_pusher_and_indexes_it() -> None:
    """The index is an HMAC under the identity keys, the same for every user and app (lookups
    by pushkey work); the sealed pushkey opens only for its own pusher."""
    vault = KeyVault(MASTER)
    index, sealed = vault.seal_pushkey("alice", "de.app", "pk/1+=")
    assert index == vault.pushkey_index("pk/1+=") == vault.seal_pushkey("bob", "x", "pk/1+=")[0]
    assert len(index) == 64 and "pk/1+=" not in index and b"pk/1+=" not in sealed
    assert index != vault.pushkey_index("pk/2+=") and index != vault.pseudonym("pk/1+=")
    assert vault.open_pushkey("alice", "de.app", index, sealed) == "pk/1+="
    for other in (("bob", "de.app", index), ("alice", "de.other", index), ("alice", "de.app", "0")):
        with pytest.raises(CryptoError):
            vault.open_pushkey(*other, sealed)
    with pytest.raises(CryptoError):
        KeyVault(os.urandom(32)).open_pushkey("alice", "de.app", index, sealed)


def test_identity_keys_are_derived_from_the_master_key_until_given() -> None:
    """Pseudonyms and indexes come from the identity keys: derived from the master key the
    database was first opened with, then kept, whatever the master key is later."""
    derived = crypto.IdentityKeys.derive(MASTER)
    assert crypto.IdentityKeys.from_bytes(derived.to_bytes()) == derived
    # The pseudonyms databases already hold: HMAC(HMAC(master key, label), user id).
    key = hmac.new(MASTER, b"fdpush/user-pseudonym/v1", hashlib.sha256).digest()
    expected = hmac.new(key, b"X110411675", hashlib.sha256).hexdigest()
    assert crypto.user_pseudonym(derived, "X110411675") == expected
    assert KeyVault(MASTER).identity == derived
    later = KeyVault(os.urandom(32), derived)
    assert later.pseudonym("X110411675") == KeyVault(MASTER).pseudonym("X110411675")
    assert later.pushkey_index("pk") == KeyVault(MASTER).pushkey_index("pk")
    assert KeyVault(os.urandom(32)).pseudonym("X110411675") != later.pseudonym("X110411675")
    for text in (repr(derived), str(derived)):
        assert derived.pseudonym_key.hex() not in text
        assert derived.pushkey_index_key.hex() not in text


def test_a_vault_remembers_indexes_only_for_the_identity_keys_it_uses() -> None:
    """Pseudonyms and pushkey indexes are remembered per process; once the vault is given other
    identity keys (a database's own), it answers with those, never with what it remembered."""
    vault = KeyVault(os.urandom(32))
    first = (vault.pseudonym("X110411675"), vault.pushkey_index("pk/1+="))
    assert (vault.pseudonym("X110411675"), vault.pushkey_index("pk/1+=")) == first
    stored = crypto.IdentityKeys.derive(MASTER)
    vault.use_identity(stored)
    assert vault.pseudonym("X110411675") == crypto.user_pseudonym(stored, "X110411675")
    assert vault.pushkey_index("pk/1+=") == crypto.pushkey_index(stored, "pk/1+=")
    assert (vault.pseudonym("X110411675"), vault.pushkey_index("pk/1+=")) != first
    assert "X110411675" not in repr(vault) and "pk/1+=" not in repr(vault)


def test_a_blob_is_sealed_anew_under_another_master_key_once() -> None:
    """What a rotation does to each stored blob: sealed under the new key when it opens under
    the current one, left alone when it is under the new one already, refused otherwise."""
    current, new = KeyVault(MASTER), KeyVault(os.urandom(32), crypto.IdentityKeys.derive(MASTER))
    blob = current.seal_record("event-payload", "e1", b"payload")
    context = b"fdpush/event-payload/v1\x00e1"
    resealed = current.reseal(blob, context, new)
    assert resealed is not None and new.open_record("event-payload", "e1", resealed) == b"payload"
    assert current.reseal(resealed, context, new) is None
    with pytest.raises(CryptoError):
        current.reseal(
            KeyVault(os.urandom(32)).seal_record("event-payload", "e1", b"x"), context, new
        )
    sealed = new.seal_identity()
    assert new.open_identity(sealed) == current.identity
    with pytest.raises(CryptoError):
        current.open_identity(sealed)


def test_key_vault_needs_a_256_bit_master_key() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        KeyVault(bytes(16))


# --- the month of a key ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("utc", "period"),
    [
        ("2024-01-31T22:59:59", "2024-01"),  # 23:59:59 CET
        ("2024-01-31T23:00:00", "2024-02"),  # midnight in Berlin, still January in UTC
        ("2024-01-31T23:30:00", "2024-02"),
        ("2024-06-30T21:59:59", "2024-06"),  # 23:59:59 CEST
        ("2024-06-30T22:00:00", "2024-07"),  # summer time: two hours ahead
        ("2023-12-31T23:00:00", "2024-01"),  # the new year starts early, too
    ],
)
def test_current_period_is_the_month_in_berlin(utc: str, period: str) -> None:
    """The key's month is Europe/Berlin's month, not UTC's."""
    moment = datetime.fromisoformat(utc).replace(tzinfo=UTC)
    assert current_period(moment) == period


def test_current_period_defaults_to_now() -> None:
    crypto.parse_period(current_period())


# --- no key material in reprs ------------------------------------------------------------------


def test_key_generation_repr_never_shows_key_material() -> None:
    """A generation printed in a log or a traceback shows its month, never secret or key."""
    generation = crypto.derive_generation(ISS, "2023-10")
    for text in (repr(generation), str(generation), f"{generation}", repr([generation])):
        assert "2023-10" in text
        for material in (generation.secret, generation.key):
            assert material.hex() not in text
            assert repr(material) not in text
            assert base64.b64encode(material).decode() not in text


def test_key_vault_repr_never_shows_the_master_key() -> None:
    text = repr(KeyVault(MASTER))
    assert MASTER.hex() not in text
    assert repr(MASTER) not in text


def test_key_generation_compares_by_value() -> None:
    """Equality is by content, so ratchet results compare against step-by-step derivations."""
    assert crypto.derive_generation(ISS, "2023-10") == KeyGeneration(
        "2023-10", bytes.fromhex(OCT_SECRET), bytes.fromhex(OCT_KEY)
    )


def test_a_key_generation_and_a_schedule_step_cannot_be_changed() -> None:
    """Both are made for every pusher a claim sends to and passed around: immutable."""
    generation = crypto.derive_generation(ISS, "2023-10")
    step = Advance(generation, (), ())
    with pytest.raises(AttributeError):
        generation.key = bytes(32)  # type: ignore[misc]
    with pytest.raises(AttributeError):
        step.generation = generation  # type: ignore[misc]
    assert not step.changes
