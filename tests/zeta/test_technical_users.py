"""Technical users of the RS API over real mutual TLS on the internal listener.

The internal listener gets a server certificate and a client CA of its own test PKI, whose
named client certificates are the Fachdienst backends: ``erp-backend`` (listed by its CN, may
send on ``erp.task.*``), ``epa-backend`` (listed by its DNS SAN, one channel) and ``stranger``
(issued by the CA, not listed). A certificate of another CA never gets past the handshake.
"""

from __future__ import annotations

import ssl
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from conftest import Service, free_port
from delivery.e2e_helpers import ACTIVATE, CLOSE, COMMUNICATION, AppDevice, Rig, delivery_env
from fdpush.gateway import GatewayThread, TestPki, make_test_pki
from zeta.test_rs_api import RS, check_schema, events_of, kvnr, notification, zeta_error

CLIENTS = "erp-backend=erp.task.*;epa-backend.san.test=erp.communication.new"


@pytest.fixture(scope="module")
def internal_pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(
        tmp_path_factory.mktemp("internal-pki"),
        extra_clients=("erp-backend", "epa-backend", "stranger"),
    )


@pytest.fixture(scope="module")
def other_ca(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """Another CA, whose client certificate even carries a listed name."""
    return make_test_pki(tmp_path_factory.mktemp("other-pki"), extra_clients=("erp-backend",))


@pytest.fixture(scope="module")
def rig(
    start_service: Callable[..., Service],
    pki: TestPki,
    internal_pki: TestPki,
    gateway: GatewayThread,
) -> Iterator[Rig]:
    port = free_port()
    service = start_service(
        **delivery_env(pki, [gateway]),
        FDPUSH_INTERNAL_PORT=str(port),
        FDPUSH_INTERNAL_TLS_CERT=str(internal_pki.server_cert),
        FDPUSH_INTERNAL_TLS_KEY=str(internal_pki.server_key),
        FDPUSH_INTERNAL_TLS_CLIENT_CA=str(internal_pki.ca_cert),
        FDPUSH_RS_CLIENTS=CLIENTS,
    )
    service.env["internal_port"] = str(port)
    running = Rig(service)
    # the events API (for the delivery checks) is on the TLS listener now too
    running.events.close()
    context = ssl.create_default_context(cafile=str(internal_pki.ca_cert))
    context.load_cert_chain(*map(str, internal_pki.named_client("stranger")))
    running.events = httpx.Client(
        base_url=f"https://127.0.0.1:{port}",
        verify=context,
        headers={"Authorization": f"Bearer {service.env['FDPUSH_INTERNAL_API_KEY']}"},
        timeout=30.0,
    )
    yield running
    running.close()


def backend(rig: Rig, trust: TestPki, cert: tuple[Path, Path] | None) -> httpx.Client:
    """The Fachdienst backend's client: trusts ``trust``'s CA, presents ``cert``."""
    context = ssl.create_default_context(cafile=str(trust.ca_cert))
    if cert is not None:
        context.load_cert_chain(str(cert[0]), str(cert[1]))
    base = f"https://127.0.0.1:{rig.service.env['internal_port']}{RS}"
    return httpx.Client(base_url=base, verify=context, timeout=30.0)


def test_a_listed_certificate_sends_on_its_channels_only(
    rig: Rig, internal_pki: TestPki, gateway: GatewayThread
) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    with backend(rig, internal_pki, internal_pki.named_client("erp-backend")) as http:
        sent = http.post("/notifications", json=notification(user, ACTIVATE))
        assert sent.status_code == 202, sent.text
        check_schema(sent.json(), "NotificationAccepted")
        assert sent.json()["status"] == "queued"
        zeta_error(
            http.post("/notifications", json=notification(user, COMMUNICATION)), 403, "FORBIDDEN"
        )
        # 422 comes before 403
        zeta_error(
            http.post("/notifications", json=notification(user, "no.such.channel")),
            422,
            "UNKNOWN_CHANNEL",
        )
        listed = http.get(
            f"/users/{user}/channels", params={"id_type": "kvnr", "include_inactive": "true"}
        )
        assert listed.status_code == 200, listed.text
        assert [c["id"] for c in listed.json()["channels"]] == [ACTIVATE, CLOSE]
    rig.delivered(uuid.UUID(sent.json()["notification_id"]).hex, 1)


def test_a_certificate_is_matched_by_its_dns_san(
    rig: Rig, internal_pki: TestPki, gateway: GatewayThread
) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    with backend(rig, internal_pki, internal_pki.named_client("epa-backend")) as http:
        sent = http.post("/notifications", json=notification(user, COMMUNICATION))
        assert sent.status_code == 202, sent.text
        assert sent.json()["status"] == "no_active_channel"  # default not_set
        zeta_error(http.post("/notifications", json=notification(user, ACTIVATE)), 403, "FORBIDDEN")


def test_an_unlisted_certificate_of_the_ca_is_forbidden(rig: Rig, internal_pki: TestPki) -> None:
    user = kvnr()
    with backend(rig, internal_pki, internal_pki.named_client("stranger")) as http:
        zeta_error(http.post("/notifications", json=notification(user)), 403, "FORBIDDEN")
        zeta_error(
            http.get(f"/users/{user}/channels", params={"id_type": "kvnr"}), 403, "FORBIDDEN"
        )
    assert events_of(rig, user) == 0


@pytest.mark.parametrize("who", ["another CA", "no certificate"])
def test_without_a_certificate_of_the_ca_there_is_no_connection(
    rig: Rig, internal_pki: TestPki, other_ca: TestPki, who: str
) -> None:
    cert = other_ca.named_client("erp-backend") if who == "another CA" else None
    with backend(rig, internal_pki, cert) as http, pytest.raises(httpx.TransportError):
        http.post("/notifications", json=notification(kvnr()))


def test_the_api_key_alone_is_no_technical_user_over_tls(rig: Rig, internal_pki: TestPki) -> None:
    """With client certificates configured, the key is not a technical user (only for events)."""
    with backend(rig, internal_pki, internal_pki.named_client("stranger")) as http:
        response = http.post(
            "/notifications",
            json=notification(kvnr()),
            headers={"Authorization": f"Bearer {rig.service.env['FDPUSH_INTERNAL_API_KEY']}"},
        )
    zeta_error(response, 403, "FORBIDDEN")


def test_idempotency_keys_are_per_technical_user(
    rig: Rig, internal_pki: TestPki, gateway: GatewayThread
) -> None:
    user = kvnr()
    rig.register(AppDevice(user, gateway))
    key = f"k-{uuid.uuid4()}"
    with backend(rig, internal_pki, internal_pki.named_client("erp-backend")) as erp:
        first = erp.post(
            "/notifications", json=notification(user, ACTIVATE), headers={"Idempotency-Key": key}
        )
    with backend(rig, internal_pki, internal_pki.named_client("epa-backend")) as epa:
        second = epa.post(
            "/notifications",
            json=notification(user, COMMUNICATION),
            headers={"Idempotency-Key": key},
        )
    assert first.status_code == second.status_code == 202, (first.text, second.text)
    assert first.json()["notification_id"] != second.json()["notification_id"]
    assert events_of(rig, user) == 2
    assert "without client certificates" not in rig.service.logs()
