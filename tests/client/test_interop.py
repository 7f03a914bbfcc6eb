"""Interop: the kit opens what the service sends, and agrees with a third party.

See docs/client-kit.md.

- Through the whole chain: an app registers through the kit's client with the kit's keyring,
  the real service seals and delivers over mutual TLS to the development gateway, and the app
  opens the APNs or FCM push the gateway shows for its device — then finds the same message in
  the history by the identifier that travelled with it.
- Against an independent implementation written below from docs/concept.md alone (no fdpush import,
  no shared test helper): what it seals, the kit opens; what fdpush's sender seals, it opens.
"""

from __future__ import annotations

import base64
import hmac
import os
import struct
from collections.abc import Callable, Iterator
from datetime import datetime
from zoneinfo import ZoneInfo

import orjson
import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import Service, dev_token, new_user
from delivery.e2e_helpers import Rig, delivery_env
from fdpush import crypto
from fdpush.client import FachdienstClient, Keyring
from fdpush.gateway import GatewayThread, TestPki

# --- a third implementation, from docs/concept.md "Sealing" alone -------------------------------


def third_party_keys(iss: bytes, first_month: str, month: str) -> bytes:
    """HKDF-SHA256 (RFC 5869, empty salt, info = month, 64 bytes) along the month chain;
    returns the AES key (the last 32 bytes) of ``month``."""

    def hkdf64(ikm: bytes, info: str) -> bytes:
        prk = hmac.digest(b"\x00" * 32, ikm, "sha256")
        t1 = hmac.digest(prk, info.encode() + b"\x01", "sha256")
        t2 = hmac.digest(prk, t1 + info.encode() + b"\x02", "sha256")
        return t1 + t2

    year, mon = map(int, first_month.split("-"))
    material = hkdf64(iss, first_month)
    while f"{year:04d}-{mon:02d}" != month:
        year, mon = (year + 1, 1) if mon == 12 else (year, mon + 1)
        material = hkdf64(material[:32], f"{year:04d}-{mon:02d}")
    return material[32:]


def third_party_seal(key: bytes, payload: bytes) -> str:
    """'PNM1', 2-byte big-endian padding length n, n padding bytes, payload = 1024 bytes."""
    n = 1024 - 6 - len(payload)
    framed = b"PNM1" + struct.pack(">H", n) + os.urandom(n) + payload  # any padding bytes
    iv = os.urandom(12)
    return base64.b64encode(iv + AESGCM(key).encrypt(iv, framed, None)).decode()


def third_party_open(key: bytes, ciphertext: str) -> bytes:
    blob = base64.b64decode(ciphertext)
    framed = AESGCM(key).decrypt(blob[:12], blob[12:], None)
    assert len(framed) == 1024 and framed[:4] == b"PNM1"
    (n,) = struct.unpack(">H", framed[4:6])
    return framed[6 + n :]


def test_the_third_party_agrees_with_the_concepts_test_vector() -> None:
    iss = bytes.fromhex("f2ca1bb6c7e907d06dafe4687e579fce76b37e4e93b7605022da52e6ccc26fd2")
    assert third_party_keys(iss, "2023-10", "2023-11").hex() == (
        "39aa5dacd538f53f4b956d84c9b8f2e26933274d160b9fd1a263a27681c6331b"
    )


@pytest.mark.parametrize("skipped", [0, 1, 3, 14])
def test_what_a_third_party_seals_the_kit_opens(skipped: int) -> None:
    keyring = Keyring.create()
    iss = bytes.fromhex(keyring.encryption()["iss"])
    start = keyring.time_iss_created
    year, mon = map(int, start.split("-"))
    index = year * 12 + mon - 1 + skipped
    month = f"{index // 12:04d}-{index % 12 + 1:02d}"
    payload = {"ChannelId": "erp.task.activate", "Identifier": "160.000.100.000.001.05", "n": 1}
    ciphertext = third_party_seal(third_party_keys(iss, start, month), orjson.dumps(payload))
    now = datetime(index // 12, index % 12 + 1, 15, tzinfo=ZoneInfo("Europe/Berlin"))
    assert keyring.decrypt(ciphertext, month, keyring.key_identifier, now=now) == payload


@pytest.mark.parametrize("skipped", [0, 2, 13])
def test_what_fdpushs_sender_seals_a_third_party_opens(skipped: int) -> None:
    iss = os.urandom(32)
    first = crypto.derive_generation(iss, "2024-11")
    generation = ([first, *crypto.ratchet(first, "2026-12")])[skipped]
    payload = orjson.dumps({"k": "v" * 500})
    ciphertext = crypto.seal_notification(generation.key, payload)
    assert len(ciphertext) == 1404
    assert third_party_open(third_party_keys(iss, "2024-11", generation.period), ciphertext) == (
        payload
    )


# --- through the whole chain ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway]), FDPUSH_HISTORY_DAYS="30"))
    yield running
    running.close()


@pytest.mark.parametrize("app_id", ["de.gematik.erezept.apns", "de.gematik.erezept.firebase"])
def test_the_kit_opens_the_push_the_service_delivered(
    rig: Rig, gateway: GatewayThread, app_id: str
) -> None:
    user, pushkey = new_user(), f"tok/{os.urandom(8).hex()}+="
    keyring = Keyring.create()
    with FachdienstClient(rig.service.base_url, token=dev_token(user)) as fd:
        fd.register_pusher(
            app_id=app_id,
            pushkey=pushkey,
            url=gateway.push_url,
            app_display_name="E-Rezept",
            device_display_name="Phone",
            keyring=keyring,
        )
        fd.set_channels(pushkey, {"erp.communication.new": "enabled"})
        payload = {"ChannelId": "erp.communication.new", "Identifier": "msg-1", "ü": "äöß"}
        event = rig.emit(user, "erp.communication.new", payload, identifier="msg-1")
        assert event["notifications"] == 1
        rig.delivered(event["event_id"], 1)
        [received] = gateway.inbox(app_id, pushkey)
        push = received["push"]
        assert ("payload" in push) if app_id.endswith(".apns") else ("message" in push)
        assert keyring.open_push(push) == payload
        assert received["notification"]["identifier"] == "msg-1"
        message = fd.history_message("msg-1")
        assert (message.identifier, message.payload) == ("msg-1", payload)
        assert [m.payload for m in fd.history_pages(pushkey, limit=1)] == [payload]
