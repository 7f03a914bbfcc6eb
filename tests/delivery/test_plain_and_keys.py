"""Plain notifications and the key schedule at send time (docs/concept.md, "Sealing").

- With ``FDPUSH_ENCRYPTION=optional`` a pusher registered without ``encryption`` gets plain
  notifications (``notify/batch``, ``content`` = the payload, ``event_id`` = our notification
  id) while its user's encrypted pushers keep getting sealed ones.
- At send time each encrypted pusher's key is ratcheted to the current Europe/Berlin month; the
  ``pusher_keys`` table then holds only generations within the retention (none older than two
  months before the current month, the youngest always), never the iss — checked by opening
  what is stored and comparing it with the independent app side's derivation.

The real ``fdpush serve`` (SQLite and PostgreSQL) delivering over mutual TLS to a development
gateway.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from conftest import Service, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    FCM_APP,
    AppDevice,
    Rig,
    berlin_month,
    delivery_env,
    hkdf_sha256,
    month_after,
    month_key,
    open_ciphertext,
)
from fdpush.domain.keys import KeyVault
from fdpush.gateway import GatewayThread, TestPki


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway], FDPUSH_ENCRYPTION="optional")))
    yield running
    running.close()


def register_plain(rig: Rig, device: AppDevice) -> None:
    """Register ``device`` without an ``encryption`` block (the field left out entirely)."""
    body = device.registration()
    del body["encryption"]
    with rig.service.client(device.user) as http:
        response = http.post("/push/v1/pushers/set", json=body)
    assert response.status_code == 200, response.text


def notification_ids(rig: Rig, event_id: str) -> dict[str, str]:
    """pushkey index → our notification id, for the event's notifications."""
    return {row[1]: row[0] for row in rig.notification_rows(event_id)}


def stored_generations(rig: Rig, device: AppDevice) -> dict[str, bytes]:
    """period → the sealed material the database holds for the device's pusher."""
    rows = rig.service.query(
        "SELECT k.period, k.material FROM pusher_keys k JOIN pushers p ON p.id = k.pusher_id"
        " WHERE p.user_id = ? AND p.app_id = ? AND p.pushkey = ? ORDER BY k.period",
        (
            rig.service.pseudonym(device.user),
            device.app_id,
            rig.service.pushkey_index(device.pushkey),
        ),
    )
    return {str(period): bytes(material) for period, material in rows}


def app_generation(device: AppDevice, month: str) -> bytes:
    """secret ‖ key of ``month`` as the app derives it from its iss (independent code)."""
    okm = hkdf_sha256(bytes.fromhex(device.iss), device.iss_month.encode())
    current = device.iss_month
    while current != month:
        current = month_after(current)
        okm = hkdf_sha256(okm[:32], current.encode())
    return okm


# --- plain notifications -------------------------------------------------------------------------


def test_a_pusher_without_encryption_gets_plain_notifications_beside_sealed_ones(
    rig: Rig, gateway: GatewayThread
) -> None:
    """One event, one user, two pushers: the one registered without ``encryption`` receives a
    plain notification via ``notify/batch`` — ``content`` is the payload, ``event_id`` our
    notification id (also the batch item's ``id``), no ciphertext — and the encrypted one a
    sealed notification via ``notifyEncrypted/batch`` that its app decrypts."""
    user = new_user()
    plain = AppDevice(user, gateway, app_id=FCM_APP, custom_data={"format": "full", "n": 1})
    sealed = AppDevice(user, gateway)
    register_plain(rig, plain)
    rig.register(sealed)
    [(pushkey_ts,)] = rig.service.query(
        "SELECT pushkey_ts FROM pushers WHERE user_id = ? AND pushkey = ?",
        (rig.service.pseudonym(user), rig.service.pushkey_index(plain.pushkey)),
    )
    payload = {"ChannelId": ACTIVATE, "Identifier": "160.000.1", "text": "Rezept bereit: Ä"}

    answer = rig.emit(user, ACTIVATE, payload, prio="low")
    assert answer["notifications"] == 2
    rig.delivered(answer["event_id"], 2)
    ids = notification_ids(rig, answer["event_id"])
    encrypted_flags = dict(
        rig.service.query(
            "SELECT p.pushkey, n.encrypted FROM notifications n"
            " JOIN pushers p ON p.id = n.pusher_id WHERE n.event_id = ?",
            (answer["event_id"],),
        )
    )
    index = rig.service.pushkey_index
    assert {k: bool(v) for k, v in encrypted_flags.items()} == {
        index(plain.pushkey): False,
        index(sealed.pushkey): True,
    }

    [got] = plain.inbox()
    assert got.endpoint == "/push/v1/notify/batch"
    assert got.item_id == ids[index(plain.pushkey)]
    note = got.notification
    assert note["content"] == payload
    assert note["event_id"] == ids[index(plain.pushkey)]
    assert note["prio"] == "low"
    assert note["device"] == {
        "app_id": FCM_APP,
        "pushkey": plain.pushkey,
        "pushkey_ts": int(pushkey_ts),
        "data": {"format": "full", "n": 1},
        "tweaks": {},
    }
    assert not {"ciphertext", "key_identifier", "time_message_encrypted"} & set(note)

    [other] = sealed.inbox()
    assert other.endpoint == "/push/v1/notifyEncrypted/batch"
    assert other.item_id == ids[index(sealed.pushkey)]
    assert "content" not in other.notification
    assert sealed.decrypt(other) == payload


def test_registering_again_switches_between_plain_and_sealed(
    rig: Rig, gateway: GatewayThread
) -> None:
    """Registering without ``encryption`` drops the pusher's key chain (nothing left in
    ``pusher_keys``) and its next notification is plain; registering with a new iss again
    seals the one after under the new chain."""
    user = new_user()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    first = rig.emit(user, ACTIVATE, {"n": 1})
    rig.delivered(first["event_id"], 1)
    assert stored_generations(rig, phone) != {}

    register_plain(rig, phone)
    assert stored_generations(rig, phone) == {}
    second = rig.emit(user, ACTIVATE, {"n": 2})
    rig.delivered(second["event_id"], 1)

    renewed = AppDevice(user, gateway, pushkey=phone.pushkey)  # a fresh iss and key id
    rig.register(renewed)
    third = rig.emit(user, ACTIVATE, {"n": 3})
    rig.delivered(third["event_id"], 1)

    one, two, three = phone.inbox()
    assert phone.decrypt(one) == {"n": 1}
    assert two.endpoint == "/push/v1/notify/batch"
    assert two.notification["content"] == {"n": 2}
    assert renewed.decrypt(three) == {"n": 3}
    with pytest.raises(AssertionError):  # the old chain's key id does not match any more
        phone.decrypt(three)


def test_a_payload_too_deep_to_send_is_refused_at_once(rig: Rig, gateway: GatewayThread) -> None:
    """A small payload nested so deeply that it could not be written into the gateway request
    (a plain notification carries it inside four levels of it, and JSON writers stop at some
    depth — orjson at 254 levels) is a 400 when it comes in, never a 202 for a notification
    that can never be sent. One level less is accepted and arrives whole."""
    user = new_user()
    phone = AppDevice(user, gateway)
    register_plain(rig, phone)

    def nested(levels: int) -> dict[str, Any]:
        inner = levels - 1  # the object itself is one level
        loaded: dict[str, Any] = json.loads('{"a":' + "[" * inner + "]" * inner + "}")
        return loaded

    too_deep = {"user_id": user, "channel": ACTIVATE, "payload": nested(251)}
    for path, body in (
        ("/internal/v1/events", too_deep),
        ("/internal/v1/events/batch", {"events": [too_deep]}),
    ):
        response = rig.events.post(path, json=body)
        assert response.status_code == 400, response.text
        assert response.json()["errcode"] == "M_INVALID_PARAM"
    assert rig.service.query(
        "SELECT count(*) FROM events WHERE user_id = ?", (rig.service.pseudonym(user),)
    ) == [(0,)]

    deepest = nested(250)
    answer = rig.emit(user, ACTIVATE, deepest)
    rig.delivered(answer["event_id"], 1)
    [received] = phone.inbox()
    assert received.notification["content"] == deepest


@pytest.mark.parametrize("encrypted", [True, False], ids=["sealed", "plain"])
def test_pusher_data_too_deep_to_send_is_refused_at_registration(
    rig: Rig, gateway: GatewayThread, encrypted: bool
) -> None:
    """``data`` (minus ``url``) travels in the clear in every notification's ``device``, inside
    six levels of the gateway request at most (a plain notification's ``devices`` list). A
    ``data`` nested too deeply for that is 400 M_INVALID_PARAM at registration (never a 500,
    nothing stored) — else each event of the user would fail, or sit in the outbox poisoning
    its batch for everyone at that gateway. The deepest ``data`` accepted arrives whole, and
    the user's other device gets its notification from the same batch."""
    user = new_user()
    other = AppDevice(user, gateway)
    rig.register(other)

    def device_with(levels: int) -> AppDevice:
        inner = levels - 1  # ``data`` itself is one level
        deep = json.loads("[" * inner + "]" * inner)
        return AppDevice(user, gateway, custom_data={"deep": deep})

    def register(device: AppDevice) -> Any:
        body = device.registration()
        if not encrypted:
            del body["encryption"]
        with rig.service.client(user) as http:
            return http.post("/push/v1/pushers/set", json=body)

    for levels in (249, 251, 300):
        response = register(device_with(levels))
        assert response.status_code == 400, (levels, response.text)
        assert response.json()["errcode"] == "M_INVALID_PARAM"
    assert [p["pushkey"] for p in rig.pushers(user)] == [other.pushkey]

    deepest = device_with(248)
    assert register(deepest).status_code == 200
    answer = rig.emit(user, ACTIVATE, {"deep": "data"})
    rig.delivered(answer["event_id"], 2)
    [received] = deepest.inbox()
    assert received.notification["device"]["data"] == deepest.custom_data
    assert [other.decrypt(r) for r in other.inbox()] == [{"deep": "data"}]


# --- the key schedule at send time ----------------------------------------------------------------


@pytest.mark.parametrize("age", [0, 1, 2, 3, 5, 24])
def test_the_key_chain_is_ratcheted_and_pruned_at_send_time(
    rig: Rig, gateway: GatewayThread, age: int
) -> None:
    """A device registered with an iss of ``age`` months ago: registration stores only the
    iss month's generation; after an event the table holds the current Berlin month's
    generation and none older than two months before it (the iss month is gone once it is
    that old), each exactly what the app derives for its month — and never the iss itself.
    The app decrypts with the ratcheted key; a second event changes nothing stored."""
    user = new_user()
    current = berlin_month()
    phone = AppDevice(user, gateway, iss_month=month_after(current, -age))
    rig.register(phone)
    assert list(stored_generations(rig, phone)) == [phone.iss_month]

    answer = rig.emit(user, ACTIVATE, {"age": age})
    rig.delivered(answer["event_id"], 1)

    stored = stored_generations(rig, phone)
    oldest_allowed = month_after(current, -2)
    assert current in stored
    assert all(oldest_allowed <= period <= current for period in stored), sorted(stored)
    if age > 2:
        assert phone.iss_month not in stored
    vault = KeyVault(rig.service.master_key())
    iss = bytes.fromhex(phone.iss)
    for period, material in stored.items():
        assert iss not in material
        owner = (vault.pseudonym(user), phone.app_id, vault.pushkey_index(phone.pushkey))
        opened = vault.open(*owner, period, material)
        assert opened.secret + opened.key == app_generation(phone, period), period
        assert iss not in (opened.secret, opened.key)

    [received] = phone.inbox()
    assert received.notification["time_message_encrypted"] == current
    assert phone.decrypt(received) == {"age": age}

    again = rig.emit(user, ACTIVATE, {"age": age, "again": True})
    rig.delivered(again["event_id"], 1)
    assert stored_generations(rig, phone) == stored
    assert phone.decrypt(phone.inbox()[-1]) == {"age": age, "again": True}


def test_a_generation_ahead_of_the_berlin_month_is_kept_and_used(
    rig: Rig, gateway: GatewayThread
) -> None:
    """An iss dated next month (allowed: the app's clock may run ahead) is the youngest and
    only generation: it is kept, not pruned or replaced, and the notification is sealed under
    it (``time_message_encrypted`` = next month), which the app opens."""
    user = new_user()
    ahead = month_after(berlin_month())
    phone = AppDevice(user, gateway, iss_month=ahead)
    rig.register(phone)

    answer = rig.emit(user, ACTIVATE, {"ahead": True})
    rig.delivered(answer["event_id"], 1)

    assert list(stored_generations(rig, phone)) == [ahead]
    [received] = phone.inbox()
    note: dict[str, Any] = received.notification
    assert note["time_message_encrypted"] == ahead
    assert note["key_identifier"] == phone.key_identifier
    key = month_key(phone.iss, ahead, ahead)
    assert json.loads(open_ciphertext(key, note["ciphertext"])) == {"ahead": True}
