"""Rules of the delivery engine that a user met as defects, end to end on both databases.

- A gateway whose circuit opened and whose probe succeeded is drained at once, not a minute
  later (its other batches had been put back for the probe's whole timeout).
- A request to a gateway is bounded by bytes as well as by count: the spec's minimum a gateway
  must accept is 256 KB, and a pusher's custom ``data`` can make 100 items larger than that.
- The allow-list is checked at send time too: a gateway removed from it gets nothing, and its
  notifications end ``failed`` with a reason that says so.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from conftest import Service, new_user
from delivery.e2e_helpers import (
    ACTIVATE,
    AppDevice,
    Rig,
    delivery_env,
    start_gateway,
    wait_for,
)
from fdpush.gateway import GatewayThread, TestPki


@pytest.fixture
def gateway(pki: TestPki) -> Iterator[GatewayThread]:
    running = start_gateway(pki)
    yield running
    running.stop()


def devices_of_one_user(rig: Rig, gateway: GatewayThread, count: int, **kw) -> list[AppDevice]:
    user = new_user()
    devices = [AppDevice(user, gateway, **kw) for _ in range(count)]
    for device in devices:
        rig.register(device)
    return devices


def test_a_recovered_gateway_is_drained_at_once(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    """The gateway answers 503 once: its circuit opens, one batch probes when it may, and the
    batches claimed meanwhile are put back. When the probe succeeds the rest goes at once —
    all 500 within seconds, where they used to wait the probe timeout (60 s)."""
    rig = Rig(start_service(**delivery_env(pki, [gateway]), FDPUSH_MAX_PUSHERS_PER_USER="100"))
    try:
        devices = devices_of_one_user(rig, gateway, 100)
        gateway.trouble(status=503, status_count=1)
        started = time.monotonic()
        answers = [rig.emit(devices[0].user, ACTIVATE, {"n": n}) for n in range(5)]
        assert sum(a["notifications"] for a in answers) == 500
        for answer in answers:
            rig.delivered(answer["event_id"], 100, timeout=30)
        took = time.monotonic() - started
        assert gateway.gateway.stats()["responses_by_status"].get("503") == 1
        assert took < 15, f"the backlog waited {took:.1f}s after the gateway recovered"
        assert "recovered" in rig.service.logs()
    finally:
        rig.close()


def test_a_request_to_a_gateway_stays_under_256_kb(
    start_service: Callable[..., Service], pki: TestPki, gateway: GatewayThread
) -> None:
    """A hundred devices whose pushers carry nearly the 2 KB of custom data a pusher may have:
    one batch of a hundred would be about 340 KB, over the 256 KB a gateway must accept.
    fdpush sends several requests, none refused with 413, and every device gets its
    notification once."""
    gateway.trouble(max_request_size_kb=256)
    rig = Rig(start_service(**delivery_env(pki, [gateway]), FDPUSH_MAX_PUSHERS_PER_USER="100"))
    try:
        devices = devices_of_one_user(rig, gateway, 100, custom_data={"blob": "x" * 1900})
        answer = rig.emit(devices[0].user, ACTIVATE, {"big": True})
        rig.delivered(answer["event_id"], 100, timeout=30)
        stats = gateway.gateway.stats()
        assert "413" not in stats["responses_by_status"], stats["responses_by_status"]
        sizes = {int(size): n for size, n in stats["batch_sizes"].items()}
        assert sum(size * n for size, n in sizes.items()) == 100
        assert max(sizes) <= 256_000 // 3_300  # each item is over 3.3 KB of JSON
        assert sum(sizes.values()) >= 2
        for device in devices:
            assert device.payloads() == [{"big": True}]
    finally:
        rig.close()


def test_a_gateway_taken_off_the_allow_list_gets_nothing(
    start_service: Callable[..., Service],
    pki: TestPki,
    gateway: GatewayThread,
    tmp_path: Path,
) -> None:
    """A device registered while its gateway was allowed; the operator then removes the gateway
    from FDPUSH_GATEWAY_ALLOWLIST and restarts. An event for the device sends nothing there:
    the notification ends ``failed``, and the reason names the allow-list."""
    first = start_service(**delivery_env(pki, [gateway]))
    rig = Rig(first)
    device = devices_of_one_user(rig, gateway, 1)[0]
    rig.close()
    first.stop()
    env = dict(first.env, FDPUSH_GATEWAY_ALLOWLIST="gateway.example:443")
    (tmp_path / "again").mkdir()
    second = Service(env, first.database_url, tmp_path / "again")
    rig = Rig(second)
    try:
        answer = rig.emit(device.user, ACTIVATE, {"to": "nowhere"})
        assert answer["notifications"] == 1
        counts = wait_for(
            lambda: (c := rig.status(answer["event_id"])["counts"])["failed"] == 1 and c,
            timeout=15,
            what="the notification failed",
        )
        assert counts == {"pending": 0, "delivered": 0, "rejected": 0, "failed": 1}
        [row] = rig.notification_rows(answer["event_id"])
        assert "allow-list" in row[4], row[4]
        assert gateway.gateway.stats()["requests"] == 0
        assert device.inbox() == []
    finally:
        rig.close()
        second.stop()
