"""What the service keeps: no iss, keys sealed under the master key, the audit log, and a
consistent state under concurrent writers (docs/concept.md, "Sealing"; docs/decisions.md).

The database is read with a driver of the test's own (``service.query``), and the sealed key
material is opened with an implementation written here, independent of ``fdpush.crypto``.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from conftest import Service, free_port, new_user, registration

# The test vector of docs/concept.md ("Sealing").
VECTOR_ISS = "f2ca1bb6c7e907d06dafe4687e579fce76b37e4e93b7605022da52e6ccc26fd2"
VECTOR_2023_10 = (
    "185fed66ea5cabbe00147bbd298b5dab0ed41b57ab254d35897b3a4504306e3b"  # secret
    "3b4adcd58dea98db8e9cb0f5763fcd04fe932d67926cc04b20ba2a2f304ffff9"  # key
)
VECTOR_2023_11 = (
    "0c8662d90b04818afb317406fe7fcfcf8d103cd9bc6ad7847890d28620e85ec3"
    "39aa5dacd538f53f4b956d84c9b8f2e26933274d160b9fd1a263a27681c6331b"
)


# --- reading the database ---------------------------------------------------------------------


def tables(service: Service) -> list[str]:
    if service.database_url.startswith("sqlite"):
        rows = service.query("SELECT name FROM sqlite_master WHERE type = 'table'")
    else:
        rows = service.query(
            "SELECT table_name FROM information_schema.tables "
            "WHERE table_schema = 'public' AND table_type = 'BASE TABLE'"
        )
    return sorted(row[0] for row in rows)


def every_value(service: Service) -> Iterator[tuple[str, Any]]:
    """Every cell of every table: ``(table, value)``."""
    for table in tables(service):
        for row in service.query(f'SELECT * FROM "{table}"'):
            for value in row:
                yield table, value


def sealed_material(
    service: Service, user: str, app_id: str, pushkey: str
) -> list[tuple[str, bytes]]:
    """The pusher's stored key generations: ``(period, blob)``, oldest first."""
    rows = service.query(
        "SELECT k.period, k.material FROM pusher_keys k JOIN pushers p ON p.id = k.pusher_id "
        "WHERE p.user_id = ? AND p.app_id = ? AND p.pushkey = ? ORDER BY k.period",
        (service.pseudonym(user), app_id, service.pushkey_index(pushkey)),
    )
    return [(period, bytes(blob)) for period, blob in rows]


def open_generation(
    master_key: bytes, blob: bytes, user: str, app_id: str, pushkey: str, period: str
) -> bytes:
    """Open a sealed generation: 0x01 ‖ nonce(12) ‖ AES-256-GCM(secret ‖ key) ‖ tag, with AAD
    (the pusher as stored: the user's pseudonym, the app, the pushkey's keyed index)."""
    assert blob[0] == 0x01
    nonce, sealed = blob[1:13], blob[13:]
    aad = "\x00".join(("fdpush/key-generation/v1", user, app_id, pushkey, period)).encode()
    return AESGCM(master_key).decrypt(nonce, sealed, aad)


def hkdf(ikm: bytes, period: str) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=64, salt=None, info=period.encode()).derive(ikm)


def set_pusher(http: httpx.Client, body: dict[str, Any]) -> None:
    response = http.post("/push/v1/pushers/set", json=body)
    assert response.status_code == 200, response.text


# --- the iss and the keys at rest ---------------------------------------------------------------


def test_no_trace_of_the_iss_in_the_database(service: Service) -> None:
    """After registration the iss is gone: in no table, no column, in no encoding or case.

    The generation derived from it is stored only sealed, so its secret and key are not there
    in the clear either.
    """
    user = new_user()
    bodies = [registration() for _ in range(3)]
    bodies[1]["encryption"]["iss"] = bodies[1]["encryption"]["iss"].upper()
    enc = bodies[2]["encryption"]
    bodies[2]["encryption"] = {
        "method": enc["method"],
        "initial_shared_secret": enc["iss"],
        "initial_key_period": enc["time_iss_created"],
        "key_identifier": enc["key_identifier"],
    }
    with service.client(user) as http:
        for body in bodies:
            response = http.post("/pushers/v1/set", json=body)
            assert response.status_code == 200, response.text
        # An update with a new iss, too.
        bodies.append(registration(bodies[0]["pushkey"]))
        set_pusher(http, bodies[-1])

    forbidden: list[bytes] = []
    for body in bodies:
        enc = body["encryption"]
        iss = bytes.fromhex(enc.get("iss") or enc["initial_shared_secret"])
        month = enc.get("time_iss_created") or enc["initial_key_period"]
        derived = hkdf(iss, month)
        for raw in (iss, derived[:32], derived[32:]):
            forbidden += [
                raw,
                raw.hex().encode(),
                raw.hex().upper().encode(),
                base64.b64encode(raw).rstrip(b"="),
                base64.urlsafe_b64encode(raw).rstrip(b"="),
            ]

    seen_tables = set()
    for table, value in every_value(service):
        seen_tables.add(table)
        if value is None:
            continue
        data = bytes(value) if isinstance(value, (bytes, bytearray, memoryview)) else None
        text = str(value).encode()
        for needle in forbidden:
            assert needle not in text, f"{table} holds key material in the clear: {value!r}"
            assert needle.lower() not in text.lower(), f"{table}: {value!r}"
            if data is not None:
                assert needle not in data, f"{table} holds key material in the clear"
    # The dump covered the tables that matter, and the keys were stored (sealed).
    assert {"pushers", "pusher_keys", "channel_states", "audit_log"} <= set(tables(service))
    assert {"pushers", "pusher_keys", "audit_log"} <= seen_tables
    assert len(sealed_material(service, user, bodies[0]["app_id"], bodies[0]["pushkey"])) == 1
    # Nor did it pass through the logs.
    logs = service.logs().lower()
    for needle in forbidden:
        assert needle.decode("latin-1").lower() not in logs


@pytest.mark.parametrize(
    ("iss", "month", "expected"),
    [(VECTOR_ISS, "2023-10", VECTOR_2023_10), (VECTOR_2023_10[:64], "2023-11", VECTOR_2023_11)],
    ids=["2023-10", "2023-11-from-the-october-secret"],
)
@pytest.mark.parametrize(
    ("path", "iss_name", "month_name"),
    [
        ("/push/v1/pushers/set", "iss", "time_iss_created"),
        ("/pushers/v1/set", "initial_shared_secret", "initial_key_period"),
    ],
    ids=["current", "seed"],
)
def test_the_crypto_test_vector_through_the_api(
    service: Service,
    path: str,
    iss_name: str,
    month_name: str,
    iss: str,
    month: str,
    expected: str,
) -> None:
    """Register with the concept's test vector; the stored row opens to secret ‖ key."""
    user = new_user()
    body = registration(
        encryption={
            "method": "aes-hmac-sha256",
            iss_name: iss,
            month_name: month,
            "key_identifier": "0f2b6a4e-5c1d-4e8f-9a7b-3c2d1e0f9a8b",
        }
    )
    with service.client(user) as http:
        response = http.post(path, json=body)
        assert response.status_code == 200, response.text
    [(period, blob)] = sealed_material(service, user, body["app_id"], body["pushkey"])
    assert period == month
    index = service.pushkey_index(body["pushkey"])
    plain = open_generation(
        service.master_key(), blob, service.pseudonym(user), body["app_id"], index, month
    )
    assert plain.hex() == expected
    # The blob is bound to its pusher: under another user's name it does not open.
    with pytest.raises(InvalidTag):
        open_generation(
            service.master_key(),
            blob,
            service.pseudonym(new_user()),
            body["app_id"],
            index,
            month,
        )


def test_a_new_iss_replaces_the_key_chain(service: Service) -> None:
    """Re-registration derives from the new iss and keeps nothing of the old chain."""
    user = new_user()
    first = registration(
        encryption={
            "method": "aes-hmac-sha256",
            "iss": VECTOR_ISS,
            "time_iss_created": "2023-10",
            "key_identifier": "first",
        }
    )
    app_id, pushkey = first["app_id"], first["pushkey"]
    with service.client(user) as http:
        set_pusher(http, first)
        [(_, old_blob)] = sealed_material(service, user, app_id, pushkey)
        second = registration(pushkey)
        set_pusher(http, second)
    enc = second["encryption"]
    [(period, blob)] = sealed_material(service, user, app_id, pushkey)
    assert period == enc["time_iss_created"] and blob != old_blob
    plain = open_generation(
        service.master_key(),
        blob,
        service.pseudonym(user),
        app_id,
        service.pushkey_index(pushkey),
        period,
    )
    assert plain == hkdf(bytes.fromhex(enc["iss"]), period)
    assert service.query(
        "SELECT key_identifier, encryption_method FROM pushers WHERE user_id = ?",
        (service.pseudonym(user),),
    ) == [(enc["key_identifier"], "aes-hmac-sha256")]


# --- audit --------------------------------------------------------------------------------------


def audit(service: Service, *users: str) -> list[dict[str, Any]]:
    """The users' audit records; the stored pseudonyms shown as the users' names."""
    names_of = {service.pseudonym(user): user for user in users}
    marks = ", ".join("?" for _ in users)
    rows = service.query(
        "SELECT at, action, actor, user_id, app_id, pushkey_hash, detail FROM audit_log "
        f"WHERE user_id IN ({marks}) ORDER BY id",
        tuple(names_of),
    )
    names = ("at", "action", "actor", "user_id", "app_id", "pushkey_hash", "detail")
    records = [dict(zip(names, row, strict=True)) for row in rows]
    for record in records:
        record["actor"] = names_of.get(record["actor"], record["actor"])
        record["user_id"] = names_of[record["user_id"]]
    return records


def test_audit_records_who_did_what_to_which_device_without_secrets(service: Service) -> None:
    alice, bob = new_user(), new_user()
    first, second = registration(), registration()
    with service.client(alice) as a, service.client(bob) as b:
        set_pusher(a, first)
        set_pusher(a, registration(first["pushkey"], device_display_name="Renamed"))
        delete = {"kind": None, "app_id": first["app_id"], "pushkey": first["pushkey"]}
        set_pusher(a, delete)
        set_pusher(a, delete)  # nothing left to delete: nothing to record
        set_pusher(a, second)
        set_pusher(b, registration(second["pushkey"]))  # append false takes it over

    records = audit(service, alice, bob)
    assert [(r["action"], r["actor"], r["user_id"]) for r in records] == [
        ("pusher.created", alice, alice),
        ("pusher.updated", alice, alice),
        ("pusher.deleted", alice, alice),
        ("pusher.created", alice, alice),
        ("pusher.removed_by_append", bob, alice),
        ("pusher.created", bob, bob),
    ]
    assert all(r["app_id"] == first["app_id"] and r["at"] is not None for r in records)
    # Which device: a hash that correlates records of one pushkey and tells pushkeys apart.
    hashes_ = [r["pushkey_hash"] for r in records]
    assert len(set(hashes_[:3])) == 1 and len(set(hashes_[3:])) == 1
    assert hashes_[0] != hashes_[3]
    # What each registration did, the same whether it took one statement or several.
    details = [None if r["detail"] is None else json.loads(r["detail"]) for r in records]
    created = {"encrypted": True, "append": False, "removed_from_other_users": 0}
    assert details == [
        created,
        created,
        None,
        created,
        None,
        {**created, "removed_from_other_users": 1},
    ]
    # Never the pushkey itself, never key material.
    secrets = [first["pushkey"], second["pushkey"]]
    for body in (first, second):
        secrets += [body["encryption"]["iss"], body["encryption"]["iss"].upper()]
    for record in records:
        text = " ".join(str(v) for v in record.values())
        assert not any(secret in text for secret in secrets), record


def test_deletion_by_a_missing_device_leaves_no_audit_record(service: Service) -> None:
    """Idempotent deletes of nothing are not events."""
    user = new_user()
    with service.client(user) as http:
        set_pusher(http, {"kind": None, "app_id": "x", "pushkey": "never-there"})
    assert audit(service, user) == []


# --- concurrency --------------------------------------------------------------------------------


def twin_of(original: Service, workdir: Path) -> Service:
    """A second ``fdpush serve`` on the same database and master key (several processes)."""
    env = {**original.env, "FDPUSH_PORT": str(free_port())}
    return Service(env, original.database_url, workdir)


@pytest.fixture(scope="module")
def twins(
    service: Service, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, Service]]:
    twin = twin_of(service, tmp_path_factory.mktemp("twin"))
    yield service, twin
    twin.stop()


def test_parallel_takeovers_of_one_pushkey_end_with_one_pusher(
    twins: tuple[Service, Service],
) -> None:
    """40 parallel pushers/set for one app_id + pushkey from two users, through two processes,
    with append false: all succeed, and exactly one pusher (with one key chain) is left."""
    users = [new_user(), new_user()]
    pushkey = registration()["pushkey"]
    app_id = "de.gematik.test.race"
    clients = {(u, s.port): s.client(u) for u in users for s in twins}
    try:

        def post(i: int) -> int:
            user, service = users[i % 2], twins[(i // 2) % 2]
            body = registration(pushkey, app_id=app_id, device_display_name=f"try {i}")
            return clients[(user, service.port)].post("/push/v1/pushers/set", json=body).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(post, range(40)))
        assert codes == [200] * 40
        listings = {
            u: clients[(u, twins[0].port)].get("/push/v1/pushers").json()["pushers"] for u in users
        }
    finally:
        for client in clients.values():
            client.close()

    service = twins[0]
    rows = service.query(
        "SELECT id, user_id FROM pushers WHERE app_id = ? AND pushkey = ?",
        (app_id, service.pushkey_index(pushkey)),
    )
    assert len(rows) == 1
    [(pusher_id, stored_winner)] = rows
    [winner] = [u for u in users if service.pseudonym(u) == stored_winner]
    loser = users[1 - users.index(winner)]
    assert [p["pushkey"] for p in listings[winner]] == [pushkey] and listings[loser] == []
    keys = service.query("SELECT count(*) FROM pusher_keys WHERE pusher_id = ?", (pusher_id,))
    assert keys == [(1,)]
    orphans = service.query(
        "SELECT count(*) FROM pusher_keys k LEFT JOIN pushers p ON p.id = k.pusher_id "
        "WHERE p.id IS NULL"
    )
    assert orphans == [(0,)]


def test_parallel_updates_of_ones_own_pusher_never_duplicate_it(
    twins: tuple[Service, Service],
) -> None:
    user = new_user()
    pushkey = registration()["pushkey"]
    clients = [s.client(user) for s in twins]
    try:

        def post(i: int) -> int:
            body = registration(pushkey, device_display_name=f"try {i}")
            return clients[i % 2].post("/pushers/v1/set", json=body).status_code

        with ThreadPoolExecutor(max_workers=16) as pool:
            codes = list(pool.map(post, range(30)))
    finally:
        for client in clients:
            client.close()
    assert codes == [200] * 30
    service = twins[0]
    rows = service.query("SELECT id FROM pushers WHERE user_id = ?", (service.pseudonym(user),))
    assert len(rows) == 1
    keys = service.query("SELECT count(*) FROM pusher_keys WHERE pusher_id = ?", (rows[0][0],))
    assert keys == [(1,)]


LIMIT = 5


@pytest.fixture(scope="module")
def limited_twins(
    start_service: Callable[..., Service], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Service, Service]]:
    limited = start_service(FDPUSH_MAX_PUSHERS_PER_USER=str(LIMIT))
    twin = twin_of(limited, tmp_path_factory.mktemp("twin"))
    yield limited, twin
    twin.stop()


def test_parallel_registrations_never_exceed_the_per_user_limit(
    limited_twins: tuple[Service, Service],
) -> None:
    user = new_user()
    clients = [s.client(user) for s in limited_twins]
    try:

        def post(i: int) -> httpx.Response:
            return clients[i % 2].post("/push/v1/pushers/set", json=registration())

        with ThreadPoolExecutor(max_workers=16) as pool:
            responses = list(pool.map(post, range(4 * LIMIT)))
    finally:
        for client in clients:
            client.close()
    codes = sorted(r.status_code for r in responses)
    assert codes == [200] * LIMIT + [400] * (3 * LIMIT)
    refusals = {r.json()["errcode"] for r in responses if r.status_code == 400}
    assert refusals == {"M_RESOURCE_LIMIT_EXCEEDED"}
    count = limited_twins[0].query(
        "SELECT count(*) FROM pushers WHERE user_id = ?", (limited_twins[0].pseudonym(user),)
    )
    assert count == [(LIMIT,)]
