"""Stored user ids are keyed pseudonyms (ZETA A_29957, variant A), on both databases.

Every way in — the Client-FD API, the internal events API, the RS API — stores only the
pseudonym; a database written in the clear is converted at the next start, its sealed key
generations included; ``fdpush audit --user`` finds a person's records by computing it.
"""

import base64
import hashlib
import os
import subprocess
import sys
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
    WorkerProcess,
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


def test_no_table_holds_a_user_id_or_a_pushkey(rig: Rig, gateway: GatewayThread) -> None:
    """Registrations, channel choices, events over both APIs, deliveries, a deregistration and a
    gateway's rejection: no table holds a user id or a pushkey in the clear, and neither do the
    logs. What is stored instead are their keyed pseudonyms and indexes (ZETA A_29957)."""
    user = kvnr()
    phone, tablet, gone = (AppDevice(user, gateway) for _ in range(3))
    for device in (phone, tablet, gone):
        rig.register(device)
    rig.choose(phone, erp_communication_new="enabled")
    rig.choose(gone, erp_communication_new="disabled")
    sent = rig.emit(user, COMMUNICATION, {"n": 1}, identifier="ref-1")
    rig.delivered(sent["event_id"], 1)
    answer = rig.events.post(RS + "/notifications", json=notification(user, ACTIVATE))
    assert answer.status_code == 202, answer.text
    rig.delivered(uuid.UUID(answer.json()["notification_id"]).hex, 3)
    with rig.service.client(user) as app:  # a device deregistered: the audit log has it
        deleted = app.post(
            "/push/v1/pushers/set",
            json={"kind": None, "app_id": tablet.app_id, "pushkey": tablet.pushkey},
        )
        assert deleted.status_code == 200, deleted.text
    gateway.gateway.reject(gone.pushkey)  # and one the gateway rejected
    rejected = rig.emit(user, ACTIVATE, {"n": 2})
    assert rig.settled(rejected["event_id"]) == {
        "pending": 0,
        "delivered": 1,
        "rejected": 1,
        "failed": 0,
    }
    assert [p["pushkey"] for p in rig.pushers(user)] == [phone.pushkey]  # opened for the app

    clear = [user] + [d.pushkey for d in (phone, tablet, gone)]
    for text in clear:
        assert cells_naming(rig.service, text) == [], text
        assert text not in rig.service.logs()
    assert cells_naming(rig.service, rig.service.pseudonym(user))  # stored, under its pseudonym
    index = rig.service.pushkey_index
    for device in (phone, tablet, gone):  # every device's records name it by its index
        assert ("audit_log", index(device.pushkey)) in cells_naming(
            rig.service, index(device.pushkey)
        )
    assert ("pushers", index(phone.pushkey)) in cells_naming(rig.service, index(phone.pushkey))


def test_audit_finds_a_person_by_their_id(rig: Rig, gateway: GatewayThread) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    result = run_cli(rig.service, "audit", "--user", user)
    assert result.returncode == 0, result.stderr
    assert rig.service.pseudonym(user) in result.stdout
    assert "1 audit record" in result.stdout and "pusher.created" in result.stdout
    other = run_cli(rig.service, "audit", "--user", kvnr())
    assert "0 audit record" in other.stdout


def _reseal_generation(
    master_key: bytes, material: bytes, old: tuple[str, ...], new: tuple[str, ...]
) -> bytes:
    """Open a key generation sealed bound to the pusher ``old`` (user, app_id, pushkey, month)
    and seal it bound to ``new`` (written out on AES-GCM: the format, not fdpush's code)."""
    aad_old = "\x00".join(("fdpush/key-generation/v1", *old)).encode()
    aad_new = "\x00".join(("fdpush/key-generation/v1", *new)).encode()
    plain = AESGCM(master_key).decrypt(material[1:13], material[13:], aad_old)
    nonce = os.urandom(12)
    return b"\x01" + nonce + AESGCM(master_key).encrypt(nonce, plain, aad_new)


def make_it_old(service: Service, user: str, devices: list[AppDevice]) -> None:
    """Turn the (stopped) service's database into one written before user ids were pseudonyms
    and pushkeys sealed (revision 0004, no data step done): user ids and pushkeys in the clear
    in every table, key generations sealed bound to them, the audit log with the unkeyed
    SHA-256 prefix of each pushkey, no ``pushkey_sealed`` column and no ``keyring``."""
    key = service.master_key()
    pseudonym = service.pseudonym(user)
    plain = {service.pushkey_index(d.pushkey): d.pushkey for d in devices}
    for pusher_id, app_id, index, period, material in service.query(
        "SELECT k.pusher_id, p.app_id, p.pushkey, k.period, k.material FROM pusher_keys k"
        " JOIN pushers p ON p.id = k.pusher_id WHERE p.user_id = ?",
        (pseudonym,),
    ):
        old = _reseal_generation(
            key,
            bytes(material),
            (pseudonym, app_id, index, period),
            (user, app_id, plain[index], period),
        )
        service.query(
            "UPDATE pusher_keys SET material = ? WHERE pusher_id = ? AND period = ?",
            (old, pusher_id, period),
        )
    for index, pushkey in plain.items():
        for table, column in [("pushers", "pushkey"), ("channel_states", "pushkey")]:
            service.query(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (pushkey, index))
        digest = hashlib.sha256(pushkey.encode()).hexdigest()[:32]
        service.query(
            "UPDATE audit_log SET pushkey_hash = ? WHERE pushkey_hash = ?", (digest, index)
        )
    for table, column in [
        ("pushers", "user_id"),
        ("channel_states", "user_id"),
        ("events", "user_id"),
        ("audit_log", "user_id"),
        ("audit_log", "actor"),
    ]:
        service.query(f"UPDATE {table} SET {column} = ? WHERE {column} = ?", (user, pseudonym))
    service.query("DELETE FROM data_steps")
    service.query("ALTER TABLE pushers DROP COLUMN pushkey_sealed")
    service.query("DROP TABLE keyring")
    service.query("DROP INDEX ix_events_sealed")  # the events as they were (0009)
    service.query("DROP TABLE dispatches")  # and the outbox as it was (0008)
    service.query(
        "CREATE INDEX ix_notifications_pending_due ON notifications (next_attempt_at)"
        " WHERE status = 'pending'"
    )
    service.query("UPDATE alembic_version SET version_num = '0004'")
    assert cells_naming(service, pseudonym) == []
    assert all(cells_naming(service, d.pushkey) for d in devices[:1])


def old_database(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> tuple[Service, str, list[AppDevice]]:
    """A stopped service whose database was written before pseudonyms and sealed pushkeys:
    a user with a device that chose a channel, and a device deleted since (the audit log
    remembers it)."""
    service = start_service(**delivery_env(pki, [gateway]))
    rig = Rig(service)
    user = kvnr()
    device, gone = AppDevice(user, gateway), AppDevice(user, gateway)
    for each in (device, gone):
        rig.register(each)
    rig.choose(device, erp_communication_new="enabled")
    rig.delivered(rig.emit(user, COMMUNICATION, {"before": "upgrade"})["event_id"], 1)
    with service.client(user) as app:
        body = {"kind": None, "app_id": gone.app_id, "pushkey": gone.pushkey}
        assert app.post("/push/v1/pushers/set", json=body).status_code == 200
    service.stop()
    rig.close()
    make_it_old(service, user, [device, gone])
    return service, user, [device, gone]


def assert_converted(service: Service, user: str, devices: list[AppDevice]) -> None:
    """No user id and no pushkey in the clear; both steps recorded; the audit log keyed."""
    for text in [user] + [d.pushkey for d in devices]:
        assert cells_naming(service, text) == [], text
    assert sorted(r[0] for r in service.query("SELECT name FROM data_steps")) == [
        "sealed-pushkeys",
        "user-pseudonyms",
    ]
    hashes = {r[0] for r in service.query("SELECT pushkey_hash FROM audit_log")}
    assert service.pushkey_index(devices[0].pushkey) in hashes  # a known device: its index
    assert all(len(h) == 64 for h in hashes)  # a deleted one's: keyed too, no SHA-256 prefix
    [(sealed,)] = service.query("SELECT count(*) FROM pushers WHERE pushkey_sealed IS NULL")
    assert sealed == 0
    assert service.query("SELECT name FROM keyring") == [("identity",)]  # kept from now on


def test_a_database_written_before_pseudonyms_and_sealed_pushkeys_is_converted_at_start(
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    service, user, (device, _gone) = old_database(start_service, pki, gateway)

    again = restart(service, tmp_path_factory.mktemp("restarted"))
    rig = Rig(again)
    try:
        assert_converted(again, user, [device, _gone])
        assert [p["pushkey"] for p in rig.pushers(user)] == [device.pushkey]
        sent = rig.emit(user, COMMUNICATION, {"after": "upgrade"})  # the choice survived
        assert sent["notifications"] == 1
        rig.delivered(sent["event_id"], 1)
        assert device.payloads()[-1] == {"after": "upgrade"}  # the re-sealed key still works
        audit = run_cli(again, "audit", "--user", user)
        assert "pusher.deleted" in audit.stdout and "pusher.created" in audit.stdout
    finally:
        rig.close()
        again.stop()


@pytest.mark.parametrize("entry", ["migrate", "worker"])
def test_migrate_and_a_worker_convert_a_database_before_any_service_starts(
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path_factory: pytest.TempPathFactory,
    entry: str,
) -> None:
    """Every entry point migrates (as allowed) and then runs the data steps: after `fdpush
    migrate`, or a worker's start, no user id and no pushkey is left in the clear."""
    service, user, devices = old_database(start_service, pki, gateway)
    if entry == "migrate":
        result = run_cli(service, "migrate")
        assert result.returncode == 0, result.stderr
        assert "user ids" in result.stderr and "pushkeys" in result.stderr  # what it converted
    else:
        WorkerProcess(service, tmp_path_factory.mktemp("worker")).stop()
    assert_converted(service, user, devices)
    assert service.query("SELECT version_num FROM alembic_version") == [("0010",)]


def test_a_database_is_not_converted_with_another_master_key(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    """Converting with the wrong key would pseudonymise and seal under it for good: the key is
    checked against what the database holds first; nothing is changed, and the right key then
    converts it."""
    service, user, devices = old_database(start_service, pki, gateway)
    wrong = {**service.env, "FDPUSH_MASTER_KEY": base64.b64encode(os.urandom(32)).decode()}
    refused = subprocess.run(
        [sys.executable, "-m", "fdpush", "migrate"],
        env=wrong,
        cwd=service.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert refused.returncode != 0
    assert "does not open this database" in refused.stderr and "Traceback" not in refused.stderr
    assert service.query("SELECT name FROM data_steps") == []
    assert service.query("SELECT name FROM keyring") == []
    assert cells_naming(service, devices[0].pushkey)  # still as it was
    assert run_cli(service, "migrate").returncode == 0
    assert_converted(service, user, devices)
