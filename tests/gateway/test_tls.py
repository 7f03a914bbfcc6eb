"""``fdpush gateway`` over real TLS: mutual TLS when given a client CA, and a command line that
explains itself and refuses what cannot work."""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys

import httpx
import pytest

from fdpush.gateway import GatewayProcess, TestPki, make_test_pki
from gateway.helpers import ENCRYPTED, encrypted_item


def _first_bytes(gateway: GatewayProcess, context: ssl.SSLContext) -> bytes:
    """Connect with ``context``, send a request and return the first bytes of the answer.

    A refused TLS 1.2 client fails in the handshake (``ssl.SSLError``); a refused TLS 1.3
    client finishes its half of the handshake and then reads nothing but the end (``b""``)
    or an alert (``ssl.SSLError``) — either way, never an HTTP answer.
    """
    host, port = gateway.url.removeprefix("https://").rsplit(":", 1)
    with (
        socket.create_connection((host, int(port)), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        tls.sendall(b"GET /_dev/health HTTP/1.1\r\nHost: gateway\r\n\r\n")
        return tls.recv(100)


def _refused(gateway: GatewayProcess, context: ssl.SSLContext) -> bool:
    try:
        return _first_bytes(gateway, context) == b""
    except (ssl.SSLError, ConnectionError):
        return True


def test_a_client_with_the_client_certificate_is_served(gateway: GatewayProcess, pki) -> None:
    """With the CA-issued client certificate, over HTTPS verified against the test CA."""
    assert gateway.url.startswith("https://127.0.0.1:")
    context = pki.client_ssl_context()

    assert _first_bytes(gateway, context).startswith(b"HTTP/1.1 200")
    response = gateway.http.post(ENCRYPTED, json={"notifications": [encrypted_item()]})
    assert response.status_code == 200
    assert response.json()["summary"]["successful"] == 1


def test_the_server_certificate_names_localhost_too(gateway: GatewayProcess, pki) -> None:
    """The throwaway server certificate verifies for ``localhost`` as well as ``127.0.0.1``."""
    port = gateway.url.rsplit(":", 1)[1]
    with httpx.Client(verify=pki.client_ssl_context()) as client:
        response = client.get(f"https://localhost:{port}/_dev/health")

    assert response.json() == {"status": "ok"}


def test_a_client_without_a_certificate_is_refused_at_the_tls_handshake(
    gateway: GatewayProcess, pki
) -> None:
    """No client certificate: TLS 1.2 fails in the handshake; TLS 1.3 gets no HTTP byte back.
    The app never sees a request."""
    tls12 = pki.client_ssl_context(with_client_cert=False)
    tls12.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _first_bytes(gateway, tls12)

    tls13 = pki.client_ssl_context(with_client_cert=False)
    tls13.minimum_version = ssl.TLSVersion.TLSv1_3
    assert _refused(gateway, tls13)

    with gateway.client(with_client_cert=False) as client, pytest.raises(httpx.TransportError):
        client.post(ENCRYPTED, json={"notifications": [encrypted_item()]})
    assert gateway.stats()["requests"] == 0


def test_a_client_certificate_from_another_ca_is_refused(
    gateway: GatewayProcess, pki, tmp_path
) -> None:
    """A certificate the gateway's client CA did not issue is as good as none."""
    stranger = make_test_pki(tmp_path / "stranger")
    context = pki.client_ssl_context(with_client_cert=False)
    context.load_cert_chain(stranger.client_cert, stranger.client_key)

    assert _refused(gateway, context)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with pytest.raises(ssl.SSLError):
        _first_bytes(gateway, context)
    assert gateway.stats()["requests"] == 0


def test_clients_that_do_not_trust_the_test_ca_or_speak_plain_http_get_nowhere(
    gateway: GatewayProcess,
) -> None:
    """The gateway really is TLS with its own certificate: the system store does not trust it,
    and plain HTTP on its port gets no answer."""
    with httpx.Client() as client, pytest.raises(httpx.ConnectError, match="CERTIFICATE"):
        client.get(gateway.url + "/_dev/health")
    with httpx.Client() as client, pytest.raises(httpx.TransportError):
        client.get(gateway.url.replace("https://", "http://") + "/_dev/health")


def test_without_client_ca_it_serves_https_to_any_client_and_warns(pki, tmp_path) -> None:
    """``--cert/--key`` alone: HTTPS without client certificates, with a warning."""
    with GatewayProcess(tmp_path, pki=pki, require_client_cert=False) as running:
        with running.client(with_client_cert=False) as client:
            assert client.get("/_dev/health").status_code == 200
        assert "client certificates are not checked" in running.logs()


def test_without_cert_it_serves_plain_http_and_warns(tmp_path) -> None:
    """No ``--cert``: plain HTTP, for tests and development, with a warning."""
    with GatewayProcess(tmp_path, tls=False) as running:
        assert running.url.startswith("http://127.0.0.1:")
        assert running.push_url == running.url + "/push/v1/"
        assert running.http.get("/_dev/health").json() == {"status": "ok"}
        assert "plain HTTP without TLS" in running.logs()


def _gateway_command(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "fdpush", "gateway", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def test_help_explains_the_endpoints_and_every_switch() -> None:
    """``fdpush gateway --help`` names the API, the ``/_dev`` endpoints and the switches."""
    result = _gateway_command("--help")

    assert result.returncode == 0
    for expected in (
        "/push/v1/notifyEncrypted/batch",
        "/_matrix/push/v1/notify",
        "/_dev/inbox?app_id=A&pushkey=P",
        "/_dev/trouble",
        "--client-ca",
        "--record",
        "--reject",
        "--fail-fraction",
        "--status",
        "--retry-after",
        "--delay-ms",
        "--delay-point",
        "--result-order",
        "--max-batch-size",
        "docs/dev-gateway.md",
    ):
        assert expected in result.stdout, expected


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--client-ca", "{ca}"], "--client-ca needs --cert and --key"),
        (["--cert", "{cert}"], "--cert and --key go together"),
        (["--cert", "{cert}", "--key", "{ca}"], "--key"),
        (["--cert", "{cert}", "--key", "{key}", "--client-ca", "{key}"], "--client-ca"),
        (["--max-request-size-kb", "100"], "at least 256"),
        (["--fail-fraction", "1.5"], "fail_fraction must be between 0 and 1"),
        (["--status", "200"], "200 is not in the range 400<=x<=599"),
    ],
)
def test_unusable_options_end_with_one_line_naming_the_problem(
    pki: TestPki, args: list[str], message: str
) -> None:
    """Wrong combinations and files that are no certificate or key stop the command at once."""
    files = {"ca": pki.ca_cert, "cert": pki.server_cert, "key": pki.server_key}
    result = _gateway_command("--port", "0", *(arg.format(**files) for arg in args))

    assert result.returncode in (1, 2)
    assert message in result.stderr
    assert "Traceback" not in result.stderr
