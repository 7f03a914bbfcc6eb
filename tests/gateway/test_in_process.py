"""The gateway inside a test's own process: a ``DevGateway`` served from a thread over mutual
TLS, whose state the test reads and changes directly — how the delivery tests use it."""

from __future__ import annotations

import json
import ssl

import httpx
import pytest

from fdpush.gateway import (
    DevGateway,
    GatewayThread,
    Limits,
    TestPki,
    Trouble,
    TroubleUpdate,
)
from gateway.helpers import APNS_APP, ENCRYPTED, FCM_APP, encrypted_item, new_pushkey


def test_a_dev_gateway_served_from_a_thread_is_inspected_directly(pki: TestPki) -> None:
    """Notifications sent over mTLS show up in ``gateway.inbox()`` as ``Received`` records;
    switches set on the object apply to the next request."""
    gone, fine = new_pushkey(), new_pushkey()
    gateway = DevGateway(trouble=Trouble(reject_pushkeys={gone}))

    with GatewayThread(gateway, pki=pki) as running:
        assert running.url.startswith("https://127.0.0.1:")
        items = [encrypted_item("a", pushkey=gone), encrypted_item("b", pushkey=fine)]

        answer = running.http.post(ENCRYPTED, json={"notifications": items}).json()

        assert answer["results"][0]["rejected"] == [gone]
        [received] = gateway.inbox(APNS_APP, fine)
        assert received.item_id == "b"
        assert received.provider == "apns"
        assert received.push is not None
        assert received.push["payload"]["ciphertext"] == items[1]["notification"]["ciphertext"]
        assert gateway.inbox(APNS_APP, gone) == []

        gateway.update_trouble(TroubleUpdate(status=503, status_count=1, retry_after=2))
        unavailable = running.http.post(ENCRYPTED, json={"notifications": items})
        assert unavailable.status_code == 503
        assert unavailable.headers["Retry-After"] == "2"
        assert gateway.stats()["responses_by_status"] == {"200": 1, "503": 1}


def test_the_thread_requires_the_client_certificate(pki: TestPki) -> None:
    """``GatewayThread`` with a PKI checks client certificates like ``fdpush gateway``."""
    with GatewayThread(pki=pki) as running:
        anonymous = running.client(with_client_cert=False)
        with anonymous, pytest.raises(httpx.TransportError):
            anonymous.get("/_dev/health")
        assert running.http.get("/_dev/health").status_code == 200
        assert running.gateway.stats()["requests"] == 0


def test_stopping_the_thread_frees_the_port_and_flushes_the_record(pki: TestPki, tmp_path) -> None:
    """After ``stop()`` nothing listens any more, and the JSON-lines file holds every push."""
    record = tmp_path / "pushes.jsonl"
    gateway = DevGateway(record_file=record, limits=Limits(max_batch_size=200))
    running = GatewayThread(gateway, pki=pki)
    pushkey = new_pushkey()
    items = [encrypted_item(pushkey=pushkey, app_id=FCM_APP) for _ in range(150)]
    assert running.http.post(ENCRYPTED, json={"notifications": items}).status_code == 200

    running.stop()

    lines = record.read_text().splitlines()
    assert len(lines) == 150
    assert json.loads(lines[-1])["push"]["message"]["token"] == pushkey
    context = pki.client_ssl_context()
    with httpx.Client(verify=context) as client, pytest.raises(httpx.ConnectError):
        client.get(running.url + "/_dev/health")


def test_bad_limits_and_switches_are_refused_when_constructed() -> None:
    """The spec's floor of 256 KB per request, and switches in range, are checked up front."""
    with pytest.raises(ValueError, match="256"):
        DevGateway(limits=Limits(max_request_size_kb=255))
    with pytest.raises(ValueError, match="fail_fraction"):
        DevGateway(trouble=Trouble(fail_fraction=2.0))
    with pytest.raises(ValueError, match="status"):
        DevGateway(trouble=Trouble(status=302))


def test_the_test_pki_server_certificate_is_for_loopback_only(pki: TestPki) -> None:
    """The throwaway server certificate names loopback addresses, nothing else, and chains to
    the throwaway CA; the keys are readable by their owner only."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pki.server_cert.read_bytes())
    names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert {str(ip) for ip in names.get_values_for_type(x509.IPAddress)} == {"127.0.0.1", "::1"}
    assert names.get_values_for_type(x509.DNSName) == ["localhost"]
    ca = x509.load_pem_x509_certificate(pki.ca_cert.read_bytes())
    cert.verify_directly_issued_by(ca)
    for key in (pki.ca_key, pki.server_key, pki.client_key):
        assert key.stat().st_mode & 0o777 == 0o600
    assert pki.client_ssl_context().verify_mode == ssl.CERT_REQUIRED
