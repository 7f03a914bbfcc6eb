"""Stored user ids are keyed pseudonyms (ZETA A_29957, variant A), on both databases.

Every way in — the Client-FD API, the internal events API, the RS API — stores only the
pseudonym; a database written in the clear is converted at the next start, its sealed key
generations included; ``fdpush audit --user`` finds a person's records by computing it.
"""

import os
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import Service
from delivery.e2e_helpers import (
    ACTIVATE,
    COMMUNICATION,
    AppDevice,
    Rig,
    delivery_env,
    restart,
    run_cli,
)
from fdpush.gateway import GatewayThread, TestPki
from zeta.test_rs_api import RS, kvnr, notification


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway]), FDPUSH_HISTORY_DAYS="30"))
    yield running
    running.close()


def tables(service: Service) -> list[str]:
    if service.database_url.startswith("sqlite"):
        rows = service.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = service.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
    return sorted(row[0] for row in rows)


def cells_naming(service: Service, text: str) -> list[tuple[str, Any]]:
    """Every cell of every table that contains ``text`` (as text or as bytes)."""
    found = []
    for table in tables(service):
        for row in service.query(f'SELECT * FROM "{table}"'):
            for value in row:
                raw = bytes(value) if isinstance(value, (bytes, memoryview)) else None
                if (raw is not None and text.encode() in raw) or (
                    raw is None and text in str(value)
                ):
                    found.append((table, value))
    return found


def test_no_table_holds_a_user_id(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    phone, tablet = AppDevice(user, gateway), AppDevice(user, gateway)
    rig.register(phone)
    rig.register(tablet)
    rig.choose(phone, erp_communication_new="enabled")
    sent = rig.emit(user, COMMUNICATION, {"n": 1}, identifier="ref-1")
    rig.delivered(sent["event_id"], 1)
    answer = rig.events.post(RS + "/notifications", json=notification(user, ACTIVATE))
    assert answer.status_code == 202, answer.text
    rig.delivered(uuid.UUID(answer.json()["notification_id"]).hex, 2)
    with rig.service.client(user) as app:  # a device deregistered: the audit log has it
        gone = app.post(
            "/push/v1/pushers/set",
            json={"kind": None, "app_id": tablet.app_id, "pushkey": tablet.pushkey},
        )
        assert gone.status_code == 200, gone.text
    assert cells_naming(rig.service, user) == []
    assert cells_naming(rig.service, rig.service.pseudonym(user))  # stored, under its pseudonym


def test_audit_finds_a_person_by_their_id(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    result = run_cli(rig.service, "audit", "--user", user)
    assert result.returncode == 0, result.stderr
    assert rig.service.pseudonym(user) in result.stdout
    assert "1 audit record" in result.stdout and "pusher.created" in result.stdout
    other = run_cli(rig.service, "audit", "--user", kvnr())
    assert "0 audit record" in other.stdout


def _seal_generation(master_key: bytes, material: bytes, context: tuple[str, ...]) -> bytes:
    """Open a generation under one pusher context and seal it under another (the old format)."""
    old, new = context[:5], context[5:]
    aad_old = "\x00".join(("fdpush/key-generation/v1", *old[:4])).encode()
    aad_new = "\x00".join(("fdpush/key-generation/v1", *new[:4])).encode()
    plain = AESGCM(master_key).decrypt(material[1:13], material[13:], aad_old)
    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(master_key).encrypt(nonce, plain, aad_new)


def test_a_database_in_the_clear_is_pseudonymised_at_start(
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    service = start_service(**delivery_env(pki, [gateway]))
    rig = Rig(service)
    user = kvnr()
    device = AppDevice(user, gateway)
    rig.register(device)
    rig.choose(device, erp_communication_new="enabled")
    pseudonym = service.pseudonym(user)
    service.stop()
    rig.close()
    # Turn the database into one written before pseudonyms: the user id in the clear everywhere,
    # the key generations sealed bound to it, and no record of the step.
    key = service.master_key()
    for pusher_id, app_id, pushkey, period, material in service.query(
        "SELECT k.pusher_id, p.app_id, p.pushkey, k.period, k.material FROM pusher_keys k"
        " JOIN pushers p ON p.id = k.pusher_id WHERE p.user_id = ?",
        (pseudonym,),
    ):
        old = _seal_generation(
            key,
            bytes(material),
            (pseudonym, app_id, pushkey, period, "", user, app_id, pushkey, period),
        )
        service.query(
            "UPDATE pusher_keys SET material = ? WHERE pusher_id = ? AND period = ?",
            (old, pusher_id, period),
        )
    for table, column in [
        ("pushers", "user_id"),
        ("channel_states", "user_id"),
        ("audit_log", "user_id"),
        ("audit_log", "actor"),
    ]:
        service.query(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (user, pseudonym))
    service.query("DELETE FROM data_steps")
    assert cells_naming(service, pseudonym) == []

    again = restart(service, tmp_path_factory.mktemp("restarted"))
    rig = Rig(again)
    try:
        assert cells_naming(again, user) == []
        assert again.query("SELECT name FROM data_steps") == [("user-pseudonyms",)]
        assert [p["pushkey"] for p in rig.pushers(user)] == [device.pushkey]
        sent = rig.emit(user, COMMUNICATION, {"after": "upgrade"})
        assert sent["notifications"] == 1
        rig.delivered(sent["event_id"], 1)
        assert device.payloads()[-1] == {"after": "upgrade"}  # the re-sealed key still works
    finally:
        rig.close()
        again.stop()
