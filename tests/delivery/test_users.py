"""Data-subject requests (docs/operations.md): ``fdpush user show|export|delete`` and the same
as the admin API on the internal listener. Erasure is checked by dumping every table."""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import text

from conftest import Service, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    INTERNAL_KEY,
    AppDevice,
    Rig,
    delivery_env,
    internal_client,
    run_cli,
)
from fdpush.config import ChannelDefinition
from fdpush.domain.events import EventRequest, EventService
from fdpush.domain.keys import KeyVault
from fdpush.domain.users import UserRequests
from fdpush.gateway import GatewayThread, TestPki
from fdpush.storage.database import Database
from fdpush.storage.schema import metadata


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> Iterator[Rig]:
    running = Rig(start_service(**delivery_env(pki, [gateway], FDPUSH_HISTORY_DAYS="30")))
    yield running
    running.close()


def populate(rig: Rig, gateway: GatewayThread) -> list[AppDevice]:
    """A user with two devices, a channel choice and a delivered event."""
    user = new_user()
    devices = [AppDevice(user, gateway), AppDevice(user, gateway)]
    for device in devices:
        rig.register(device)
    rig.choose(devices[0], erp_communication_new="enabled")
    event = rig.emit(user, ACTIVATE, {"id": "160.000.000.000.001.02"}, identifier="task-1")
    rig.delivered(event["event_id"], 2)
    return devices


def dump(service: Service) -> str:
    """Every row of every table of the schema, as text."""
    rows = []
    for table in metadata.sorted_tables:
        for row in service.query(f"SELECT * FROM {table.name}"):
            rows.append(f"{table.name}: {row!r}")
    return "\n".join(rows)


def secrets_of(service: Service, devices: list[AppDevice]) -> list[str]:
    """What the database holds that belongs to the person: the user id as stored (its keyed
    pseudonym), the pushkeys as stored (their keyed indexes), key identifiers."""
    return [service.pseudonym(devices[0].user)] + [
        s for d in devices for s in (service.pushkey_index(d.pushkey), d.key_identifier)
    ]


def never_stored(devices: list[AppDevice]) -> list[str]:
    """What the database never holds in the clear: user ids, pushkeys, the iss."""
    return [devices[0].user] + [s for d in devices for s in (d.pushkey, d.iss)]


def log_reference(service: Service, pushkey: str) -> str:
    """The ``pk:`` reference the service's logs give a pushkey (``fdpush.logs.pushkey_ref``)."""
    key = hmac.new(service.master_key(), b"fdpush/log-reference/v1", hashlib.sha256).digest()
    return "pk:" + hmac.new(key, f"pushkey\x00{pushkey}".encode(), hashlib.sha256).hexdigest()[:16]


def test_the_admin_api_needs_the_internal_key(rig: Rig) -> None:
    user = new_user()
    for method in ("GET", "DELETE"):
        for key in (None, "wrong-key"):
            with internal_client(rig.service.base_url, key) as http:
                response = http.request(method, f"/internal/v1/users/{user}")
            assert response.status_code == 401, response.text


def test_show_is_what_a_support_desk_needs(rig: Rig, gateway: GatewayThread) -> None:
    devices = populate(rig, gateway)
    response = rig.events.get(f"/internal/v1/users/{devices[0].user}")
    assert response.status_code == 200, response.text
    shown = response.json()
    assert len(shown["devices"]) == 2
    assert {d["device"] for d in shown["devices"]} == {
        log_reference(rig.service, d.pushkey) for d in devices
    }
    for device in shown["devices"]:
        assert device["device_display_name"] == "Test phone"
        assert device["created"] and device["last_delivery"]
    assert {"channel": "erp.communication.new", "status": "enabled"}.items() <= (
        shown["channel_states"][0].items()
    )
    (event,) = shown["recent_events"]
    assert event["channel"] == ACTIVATE
    assert event["outcomes"] == {"delivered": 2}
    text = response.text
    for secret in [s for d in devices for s in (d.pushkey, d.iss)]:
        assert secret not in text
    cli = run_cli(rig.service, "user", "show", devices[0].user)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout)["recent_events"][0]["outcomes"] == {"delivered": 2}


def test_export_holds_everything_but_keys(rig: Rig, gateway: GatewayThread) -> None:
    devices = populate(rig, gateway)
    cli = run_cli(rig.service, "user", "export", devices[0].user)
    assert cli.returncode == 0, cli.stderr
    exported: dict[str, Any] = json.loads(cli.stdout)
    assert exported["user_id"] == devices[0].user
    assert {p["pushkey"] for p in exported["pushers"]} == {d.pushkey for d in devices}
    assert {p["key_identifier"] for p in exported["pushers"]} == {d.key_identifier for d in devices}
    assert exported["channel_states"][0]["channel_id"] == "erp.communication.new"
    (event,) = exported["events"]
    assert event["identifier"] == "task-1"
    assert event["payload"] == {"id": "160.000.000.000.001.02"}  # stored sealed, opened for it
    assert {n["status"] for n in event["notifications"]} == {"delivered"}
    assert {n["pushkey"] for n in event["notifications"]} == {d.pushkey for d in devices}
    assert len(exported["audit"]) >= 2, "the audit records of the two registrations"
    for device in devices:
        assert device.iss not in cli.stdout
    assert "material" not in cli.stdout
    via_api = rig.events.get(f"/internal/v1/users/{devices[0].user}/export")
    assert via_api.status_code == 200
    assert via_api.json()["pushers"] == exported["pushers"]
    assert via_api.json()["events"] == exported["events"]
    # A device deregistered since: its notification stays, linked to no device.
    with rig.service.client(devices[1].user) as app:
        body = {"kind": None, "app_id": devices[1].app_id, "pushkey": devices[1].pushkey}
        assert app.post("/push/v1/pushers/set", json=body).status_code == 200
    later = rig.events.get(f"/internal/v1/users/{devices[0].user}/export").json()
    assert [p["pushkey"] for p in later["pushers"]] == [devices[0].pushkey]
    (event,) = later["events"]
    assert sorted((n["pushkey"] or "", n["status"]) for n in event["notifications"]) == [
        ("", "delivered"),
        (devices[0].pushkey, "delivered"),
    ]


def test_export_opens_each_payload_it_can_in_process(tmp_path: Path) -> None:
    """In-process, on SQLite: a payload still stored is opened; one that does not open (a
    damaged row) is named as such, and the rest of the export is there all the same."""

    async def run() -> tuple[dict[str, dict[str, Any]], str, str]:
        db = Database(f"sqlite:///{tmp_path / 'fdpush.db'}")
        try:
            await db.migrate()
            vault = KeyVault(os.urandom(32))
            events = EventService(
                db,
                catalog=[ChannelDefinition(ACTIVATE, "enabled")],
                vault=vault,
                history_days=0,
                encryption_mode="required",
            )
            stored = vault.pseudonym("X110411675")
            first, damaged = await events.emit(
                [EventRequest(stored, ACTIVATE, {"n": n}) for n in (1, 2)]
            )
            async with db.write() as conn:
                await conn.execute(
                    text("UPDATE events SET payload = :junk WHERE id = :id"),
                    {"junk": b"\x00" * 40, "id": damaged.event_id},
                )
            exported = await UserRequests(db, vault).export("X110411675")
            by_id = {e["event_id"]: e for e in exported["events"]}
            return by_id, first.event_id, damaged.event_id
        finally:
            await db.close()

    by_id, first, damaged = asyncio.run(run())
    assert by_id[first]["payload"] == {"n": 1}
    assert by_id[damaged]["payload"] is None
    assert "does not open" in by_id[damaged]["payload_error"]


@pytest.mark.parametrize("how", ["admin-api", "cli"])
def test_erasure_leaves_nothing_behind(rig: Rig, gateway: GatewayThread, how: str) -> None:
    devices = populate(rig, gateway)
    bystander = populate(rig, gateway)  # another person: untouched
    before = dump(rig.service)
    for secret in secrets_of(rig.service, devices):
        assert secret in before, "the check below can see what it looks for"
    for secret in never_stored(devices):
        assert secret not in before
    if how == "admin-api":
        response = rig.events.delete(f"/internal/v1/users/{devices[0].user}")
        assert response.status_code == 200, response.text
        erased = response.json()["erased"]
        assert erased["pushers"] == 2
        assert erased["notifications"] == 2
        assert erased["events"] == 1
        assert erased["key_generations"] >= 2
    else:
        cli = run_cli(rig.service, "user", "delete", "--yes", devices[0].user)
        assert cli.returncode == 0, cli.stderr
        assert "2 pushers" in cli.stdout
    after = dump(rig.service)
    for secret in secrets_of(rig.service, devices):
        assert secret not in after, secret
    assert rig.service.pseudonym(bystander[0].user) in after
    assert rig.service.pushkey_index(bystander[0].pushkey) in after
    erased_records = rig.service.query(
        "SELECT actor, user_id, app_id, detail FROM audit_log WHERE action = ?", ("user.erased",)
    )
    assert erased_records, "the erasure is recorded"
    with internal_client(rig.service.base_url, INTERNAL_KEY) as http:
        shown = http.get(f"/internal/v1/users/{devices[0].user}").json()
    assert shown == {"devices": [], "channel_states": [], "recent_events": []}
    # The person's app can register again from scratch.
    rig.register(devices[0])
    assert len(rig.pushers(devices[0].user)) == 1
    assert httpx.get(rig.service.base_url + "/health/ready").status_code == 200
