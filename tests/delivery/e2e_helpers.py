"""Helpers for the end-to-end delivery tests: an independent app side, and the rig around it.

**The app side** is written from ``docs/concept.md`` alone — it does not import ``fdpush.crypto`` or
``fdpush.domain``, so a mistake there cannot cancel out here: HKDF-SHA256 (RFC 5869, on
``hmac``), the month ratchet from the iss the test generated, AES-256-GCM, the ``PNM1`` frame
of 1024 bytes, Base64 of 1404 characters. :class:`AppDevice` is one app on one phone: it
registers with its own iss and decrypts what the gateway recorded for it.

**The rig** is a real ``fdpush serve`` (from ``conftest``) delivering over mutual TLS to
development gateways (:class:`~fdpush.gateway.GatewayThread`) on loopback, plus the internal
events API. Waiting is always polling a condition against a deadline (:func:`wait_for`).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import quote
from zoneinfo import ZoneInfo

import httpx
import orjson
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from conftest import Service, free_port
from fdpush.gateway import DevGateway, GatewayThread, Received, TestPki
from fdpush.gateway.runner import stop_process

INTERNAL_KEY = "internal-events-key-0123456789abcdef"
APNS_APP = "de.gematik.erezept.apns"
FCM_APP = "de.gematik.erezept.firebase"
# The conftest catalog: one channel of each default status.
ACTIVATE = "erp.task.activate"  # default enabled
COMMUNICATION = "erp.communication.new"  # default not_set
CLOSE = "erp.task.close"  # default disabled

T = TypeVar("T")


# --- the app side (docs/concept.md, "Sealing") ----------------------------------------------------


def hkdf_sha256(ikm: bytes, info: bytes, length: int = 64) -> bytes:
    """RFC 5869 with no salt (a string of HashLen zeros), written out on ``hmac``."""
    prk = hmac.new(bytes(32), ikm, hashlib.sha256).digest()
    okm, block, counter = b"", b"", 1
    while len(okm) < length:
        block = hmac.new(prk, block + info + bytes([counter]), hashlib.sha256).digest()
        okm += block
        counter += 1
    return okm[:length]


def month_after(month: str, steps: int = 1) -> str:
    """``"YYYY-MM"`` ``steps`` months later (negative: earlier)."""
    year, mon = (int(part) for part in month.split("-"))
    index = year * 12 + (mon - 1) + steps
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def berlin_month() -> str:
    """The current month in Europe/Berlin, the month the service must encrypt for."""
    return datetime.now(ZoneInfo("Europe/Berlin")).strftime("%Y-%m")


def month_key(iss_hex: str, iss_month: str, month: str) -> bytes:
    """The AES key of ``month``: first month from the iss, each later one from the last secret."""
    okm = hkdf_sha256(bytes.fromhex(iss_hex), iss_month.encode())
    current = iss_month
    while current != month:
        assert current < month, f"{month} lies before the iss month {iss_month}"
        current = month_after(current)
        okm = hkdf_sha256(okm[:32], current.encode())
    return okm[32:]


def open_ciphertext(key: bytes, ciphertext: str) -> bytes:
    """The payload bytes of a sealed notification, checking every rule of the format."""
    assert len(ciphertext) == 1404, f"ciphertext has {len(ciphertext)} characters, not 1404"
    raw = base64.b64decode(ciphertext, validate=True)  # standard alphabet, padded
    assert base64.b64encode(raw).decode() == ciphertext
    iv, sealed = raw[:12], raw[12:]
    framed = AESGCM(key).decrypt(iv, sealed, None)
    assert len(framed) == 1024, f"the frame has {len(framed)} bytes, not 1024"
    assert framed[:4] == b"PNM1", f"frame magic {framed[:4]!r}"
    padding = int.from_bytes(framed[4:6], "big")
    assert 6 + padding <= 1024
    return framed[6 + padding :]


@dataclass
class AppDevice:
    """One app on one phone: the pusher it registers and the keys only it (and fdpush) hold."""

    user: str
    gateway: GatewayThread | None  # None: a gateway that is not up yet (give ``url``)
    app_id: str = APNS_APP
    pushkey: str = field(default_factory=lambda: f"pk/{uuid.uuid4().hex}+=")
    iss: str = field(default_factory=lambda: os.urandom(32).hex())
    iss_month: str = field(default_factory=berlin_month)
    key_identifier: str = field(default_factory=lambda: str(uuid.uuid4()))
    custom_data: dict[str, Any] = field(default_factory=dict)
    url: str | None = None  # data.url; default: the gateway's

    def registration(self, **overrides: Any) -> dict[str, Any]:
        """The ``pushers/set`` body this app sends (current spelling)."""
        body: dict[str, Any] = {
            "kind": "http",
            "app_id": self.app_id,
            "pushkey": self.pushkey,
            "app_display_name": "E-Rezept",
            "device_display_name": "Test phone",
            "lang": "de",
            "data": {"url": self.url or self.dev_gateway_thread.push_url, **self.custom_data},
            "encryption": {
                "method": "aes-hmac-sha256",
                "iss": self.iss,
                "time_iss_created": self.iss_month,
                "key_identifier": self.key_identifier,
            },
        }
        body.update(overrides)
        return body

    @property
    def dev_gateway_thread(self) -> GatewayThread:
        assert self.gateway is not None, "this device's gateway is not running"
        return self.gateway

    @property
    def dev_gateway(self) -> DevGateway:
        return self.dev_gateway_thread.gateway

    def inbox(self) -> list[Received]:
        """What the gateway recorded for this device, oldest first."""
        return self.dev_gateway.inbox(self.app_id, self.pushkey)

    def decrypt(self, received: Received) -> dict[str, Any]:
        """Open a received notification as the app would; checks what travels beside it."""
        note = received.notification
        assert note["key_identifier"] == self.key_identifier
        assert note["time_message_encrypted"] == berlin_month()
        key = month_key(self.iss, self.iss_month, note["time_message_encrypted"])
        payload: dict[str, Any] = orjson.loads(open_ciphertext(key, note["ciphertext"]))
        return payload

    def payloads(self) -> list[dict[str, Any]]:
        return [self.decrypt(r) for r in self.inbox()]


# --- waiting -----------------------------------------------------------------------------------


def wait_for(
    condition: Callable[[], T], *, timeout: float = 10.0, interval: float = 0.01, what: str = ""
) -> T:
    """Poll ``condition`` until it returns something truthy; that value. Fails at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what or condition}")
        time.sleep(interval)


# --- the rig -----------------------------------------------------------------------------------


def delivery_env(pki: TestPki, gateways: Iterable[GatewayThread | int], **extra: str) -> dict:
    """Settings for a service that delivers to ``gateways`` (running, or just a port) over mTLS."""
    ports = [g if isinstance(g, int) else int(g.url.rsplit(":", 1)[1]) for g in gateways]
    return {
        "FDPUSH_GATEWAY_ALLOWLIST": ";".join(f"127.0.0.1:{p}" for p in ports),
        "FDPUSH_GATEWAY_CA_FILE": str(pki.ca_cert),
        "FDPUSH_GATEWAY_CLIENT_CERT": str(pki.client_cert),
        "FDPUSH_GATEWAY_CLIENT_KEY": str(pki.client_key),
        "FDPUSH_INTERNAL_API_KEY": INTERNAL_KEY,
        **extra,
    }


def start_gateway(pki: TestPki, *, port: int = 0) -> GatewayThread:
    """A development gateway over HTTPS on loopback, client certificates required."""
    return GatewayThread(DevGateway(), pki=pki, port=port)


def free_gateway_port(pki: TestPki) -> int:
    """A port a gateway could listen on later (a gateway that is down for now)."""
    probe = start_gateway(pki)
    port = int(probe.url.rsplit(":", 1)[1])
    probe.stop()
    return port


def internal_client(base_url: str, key: str | None = INTERNAL_KEY) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=base_url, headers=headers, timeout=30.0)


class Rig:
    """A running service and the gateways it delivers to, driven like a Fachdienst would."""

    def __init__(self, service: Service) -> None:
        self.service = service
        self.events = internal_client(service.base_url)

    # --- the app's side of the client API

    def register(self, device: AppDevice, **registration: Any) -> None:
        with self.service.client(device.user) as http:
            response = http.post("/push/v1/pushers/set", json=device.registration(**registration))
        assert response.status_code == 200, response.text

    def choose(self, device: AppDevice, **statuses: str) -> None:
        """Set channel choices of a device; keyword names use ``_`` for ``.``."""
        body = {"channels": [{"id": k.replace("_", "."), "status": v} for k, v in statuses.items()]}
        with self.service.client(device.user) as http:
            response = http.post(f"/push/v1/channels/{quote(device.pushkey, safe='')}", json=body)
        assert response.status_code == 200, response.text

    def pushers(self, user: str) -> list[dict[str, Any]]:
        with self.service.client(user) as http:
            response = http.get("/push/v1/pushers")
        assert response.status_code == 200, response.text
        pushers: list[dict[str, Any]] = response.json()["pushers"]
        return pushers

    # --- the Fachdienst's side: the internal API

    def emit(self, user: str, channel: str, payload: dict[str, Any], **fields: Any) -> dict:
        response = self.events.post(
            "/internal/v1/events",
            json={"user_id": user, "channel": channel, "payload": payload, **fields},
        )
        assert response.status_code == 202, response.text
        answer: dict[str, Any] = response.json()
        return answer

    def emit_many(self, events: list[dict[str, Any]]) -> list[dict[str, Any]]:
        response = self.events.post("/internal/v1/events/batch", json={"events": events})
        assert response.status_code == 202, response.text
        results: list[dict[str, Any]] = response.json()["results"]
        return results

    def status(self, event_id: str) -> dict[str, Any]:
        response = self.events.get(f"/internal/v1/events/{event_id}")
        assert response.status_code == 200, response.text
        status: dict[str, Any] = response.json()
        return status

    def settled(self, event_id: str, *, timeout: float = 15.0) -> dict[str, int]:
        """The event's counts once nothing is pending any more."""

        def counts() -> dict[str, int] | None:
            current: dict[str, int] = self.status(event_id)["counts"]
            return None if current["pending"] else current

        try:
            return wait_for(counts, timeout=timeout, interval=0.02, what=f"{event_id} settles")
        except AssertionError as exc:
            rows = self.notification_rows(event_id)
            # The worker's lines, not the polling's access lines, say why.
            lines = [x for x in self.service.logs().splitlines() if "fdpush.access" not in x]
            tail = "\n".join(lines[-40:])
            raise AssertionError(f"{exc}\nnotifications: {rows}\nservice log:\n{tail}") from None

    def delivered(self, event_id: str, notifications: int, *, timeout: float = 15.0) -> None:
        """Every one of the event's ``notifications`` ends delivered."""
        counts = self.settled(event_id, timeout=timeout)
        assert counts == {
            "pending": 0,
            "delivered": notifications,
            "rejected": 0,
            "failed": 0,
        }, counts

    def notification_rows(self, event_id: str) -> list[tuple[Any, ...]]:
        """``(id, pushkey index, status, attempts, last_error)`` of the event's notifications
        (the index as stored, ``Service.pushkey_index``; None once the pusher is gone)."""
        return self.service.query(
            "SELECT n.id, p.pushkey, n.status, n.attempts, n.last_error FROM notifications n"
            " LEFT JOIN pushers p ON p.id = n.pusher_id WHERE n.event_id = ? ORDER BY n.id",
            (event_id,),
        )

    def close(self) -> None:
        self.events.close()


# --- more processes on a service's database ------------------------------------------------------


def restart(service: Service, workdir: Path) -> Service:
    """Another ``fdpush serve`` on the same database, port and master key as ``service``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return Service(dict(service.env), service.database_url, workdir)


class WorkerProcess:
    """``fdpush worker`` on a service's database (its settings), output in ``workdir``."""

    def __init__(self, service: Service, workdir: Path, *, processes: int = 1) -> None:
        workdir.mkdir(parents=True, exist_ok=True)
        self.log_path = workdir / "worker.log"
        self._log = self.log_path.open("wb")
        self.metrics_port = free_port()
        self.process = subprocess.Popen(
            [sys.executable, "-m", "fdpush", "worker", "--processes", str(processes)],
            env={**service.env, "FDPUSH_WORKER_METRICS_PORT": str(self.metrics_port)},
            cwd=workdir,
            stdout=self._log,
            stderr=subprocess.STDOUT,
        )
        wait_for(
            lambda: (
                self.logs().count("delivery worker ") >= processes + 1
                or self.process.poll() is not None
            ),
            timeout=30,
            what="the workers start",
        )
        assert self.process.poll() is None, self.logs()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def children(self) -> list[int]:
        """The pids of its delivery processes."""
        tasks = Path(f"/proc/{self.process.pid}/task")
        pids: list[int] = []
        for task in tasks.iterdir():
            text = (task / "children").read_text().split()
            pids += [int(p) for p in text]
        return [p for p in pids if "spawn_main" in _cmdline(p)]  # not the resource tracker

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)
        self._log.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def run_cli(service: Service, *args: str) -> subprocess.CompletedProcess[str]:
    """``fdpush ARGS`` with the service's settings (same database, same master key)."""
    return subprocess.run(
        [sys.executable, "-m", "fdpush", *args],
        env=service.env,
        cwd=service.workdir,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
