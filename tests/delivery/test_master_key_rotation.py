"""Rotating the master key (docs/operations.md): data written under key A, `fdpush master-key
rotate` to key B — interrupted halfway, then run again — and the service started with B opens
everything, while A no longer starts nor opens anything. On both databases."""

from __future__ import annotations

import asyncio
import base64
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import Service
from delivery.e2e_helpers import (
    COMMUNICATION,
    AppDevice,
    Rig,
    delivery_env,
    run_cli,
    wait_for,
)
from fdpush.domain.keys import KeyVault
from fdpush.domain.rotation import rotate_master_key
from fdpush.gateway import GatewayThread, TestPki
from fdpush.storage.database import Database
from zeta.test_rs_api import RS, kvnr


def key_file(path: Path, key: bytes) -> Path:
    """A key file as an operator makes one: Base64, owner-only."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, base64.b64encode(key))
    os.close(fd)
    return path


def event_payloads(service: Service) -> list[tuple[str, bytes]]:
    return [(str(i), bytes(p)) for i, p in service.query("SELECT id, payload FROM events")]


def opens(key: bytes, event_id: str, blob: bytes) -> bool:
    """Whether an event payload opens under ``key`` (the at-rest format, written out)."""
    context = f"fdpush/event-payload/v1\x00{event_id}".encode()
    try:
        AESGCM(key).decrypt(blob[1:13], blob[13:], context)
    except InvalidTag:
        return False
    return True


class Stop(Exception):
    """The rotation's process dies here."""


def rotate_until_stopped(service: Service, old: bytes, new: bytes) -> None:
    """Run the rotation in this process, one row per transaction, and let it die after the
    first chunk of event payloads: pushers done, payloads partly, nothing finished."""

    def progress(what: str, done: int, _total: int) -> None:
        if what == "event payloads" and done >= 1:
            raise Stop

    async def run() -> None:
        db = Database(service.database_url)
        try:
            await rotate_master_key(db, KeyVault(old), KeyVault(new), chunk=1, progress=progress)
        finally:
            await db.close()

    with pytest.raises(Stop):
        asyncio.run(run())


def test_a_rotated_database_opens_with_the_new_key_and_no_longer_with_the_old(
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    service = start_service(**delivery_env(pki, [gateway], FDPUSH_HISTORY_DAYS="30"))
    rig = Rig(service)
    user = kvnr()
    phone = AppDevice(user, gateway)
    rig.register(phone)
    rig.choose(phone, erp_communication_new="enabled")
    for n in range(3):
        sent = rig.emit(user, COMMUNICATION, {"before": n}, identifier=f"before-{n}")
        rig.delivered(sent["event_id"], 1)
    gateway.trouble(status=503)  # one notification is still pending when the key changes
    pending = rig.emit(user, COMMUNICATION, {"during": "rotation"})
    wait_for(
        lambda: rig.notification_rows(pending["event_id"])[0][3] >= 1,
        timeout=15,
        what="a first, failed attempt",
    )
    service.stop()
    rig.close()
    gateway.reset_trouble()
    service.query("UPDATE dispatches SET next_attempt_at = 0")  # the pending one: due now
    pseudonym = service.pseudonym(user)  # under key A, from which the identity keys come
    old, new = service.master_key(), os.urandom(32)
    new_file = key_file(tmp_path_factory.mktemp("keys") / "new.key", new)
    rotate = ("master-key", "rotate", "--new-key-file", str(new_file), "--chunk-size", "2")

    if service.database_url.startswith("postgresql"):  # a session left open: not now
        import psycopg

        with psycopg.connect(service.database_url):
            busy = run_cli(service, *rotate)
        assert busy.returncode != 0 and "other session" in busy.stderr, busy.stderr

    # Interrupted halfway: no process starts, with either key, until it is finished.
    rotate_until_stopped(service, old, new)
    payloads = event_payloads(service)
    assert any(opens(old, *p) for p in payloads) and any(opens(new, *p) for p in payloads)
    with_new = {**service.env, "FDPUSH_MASTER_KEY_FILE": str(new_file)}
    for env in (service.env, with_new):
        started = _start(env, service, tmp_path_factory)
        assert isinstance(started, str) and "rotation of the master key is unfinished" in started
    shown = run_cli(service, "user", "show", user)
    assert shown.returncode != 0 and "rotation of the master key is unfinished" in shown.stderr

    # Run again, it finishes: what the stopped run did is found under the new key already.
    finished = run_cli(service, *rotate)
    assert finished.returncode == 0, finished.stderr
    assert "under the new key already (an interrupted run)" in finished.stdout
    assert "done: the database is now sealed under the new key" in finished.stdout
    assert "pushers" in finished.stderr  # the progress display
    assert all(opens(new, *p) and not opens(old, *p) for p in event_payloads(service))
    again = run_cli(service, *rotate)  # the old key given once more: a sweep, nothing left
    assert again.returncode == 0 and "sealed under the new key:" not in again.stdout

    # With the new key: everything opens, and the pseudonyms are the same.
    rotated = _start(with_new, service, tmp_path_factory)
    assert isinstance(rotated, Service), rotated
    rig = Rig(rotated)
    try:
        assert [p["pushkey"] for p in rig.pushers(user)] == [phone.pushkey]
        rig.delivered(pending["event_id"], 1)  # its payload and the device's key, re-sealed
        after = rig.emit(user, COMMUNICATION, {"after": "rotation"})
        rig.delivered(after["event_id"], 1)
        assert [p for p in phone.payloads() if "before" not in p] == [
            {"during": "rotation"},
            {"after": "rotation"},
        ]
        with rotated.client(user) as app:
            history = app.get(f"/push/v1/history/device/{quote(phone.pushkey, safe='')}")
        assert history.status_code == 200, history.text
        assert {"identifier": "before-0", "payload": {"before": 0}} in history.json()["messages"]
        found = rig.events.get(f"{RS}/users/{user}/channels", params={"id_type": "kvnr"})
        assert found.status_code == 200, found.text  # the KVNR is found: same pseudonym
        assert found.json()["registered_device_count"] == 1
        assert rotated.query("SELECT DISTINCT user_id FROM pushers") == [(pseudonym,)]
        shown = run_cli(rotated, "user", "show", user)
        assert shown.returncode == 0 and '"pk:' in shown.stdout, shown.stderr
    finally:
        rig.close()
        rotated.stop()

    # With the old key: it does not start, and opens nothing.
    refused = _start(service.env, service, tmp_path_factory)
    assert isinstance(refused, str) and "does not open this database" in refused
    export = run_cli(service, "user", "export", user)
    assert export.returncode != 0 and "does not open this database" in export.stderr
    assert "Traceback" not in export.stderr


def _start(env: dict[str, Any], like: Service, tmp: pytest.TempPathFactory) -> Service | str:
    """``fdpush serve`` with ``env`` on ``like``'s database: the running service, or its log
    when it refused to start."""
    try:
        return Service(dict(env), like.database_url, tmp.mktemp("service"))
    except RuntimeError as exc:
        return str(exc)
