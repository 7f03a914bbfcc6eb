"""A throwaway PKI for tests and the demo: a CA, a server certificate, a client certificate.

``make_test_pki(directory)`` writes PEM files (keys owner-only) and returns their paths. The
server certificate names ``127.0.0.1``, ``::1`` and ``localhost`` in its subjectAltName, so
clients can verify it against the CA with ordinary hostname checking; the client certificate
is for mutual TLS. Keys are ECDSA P-256: quick to make, accepted everywhere. Never use these
for anything but local testing: the CA key lies next to the certificates.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = ["TestPki", "make_test_pki"]

_DEFAULT_HOSTS = ("127.0.0.1", "::1", "localhost")


@dataclass(frozen=True)
class TestPki:
    """Paths of a throwaway PKI's PEM files."""

    __test__ = False  # not a pytest test class, despite the name

    directory: Path
    ca_cert: Path
    ca_key: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    # named clients (``extra_clients``): name → (certificate, key)
    named_clients: dict[str, tuple[Path, Path]] = field(default_factory=dict, kw_only=True)

    def named_client(self, name: str) -> tuple[Path, Path]:
        """Certificate and key of one of ``extra_clients``: CN ``name``, DNS SAN
        ``name.san.test``."""
        return self.named_clients[name]

    def client_ssl_context(self, *, with_client_cert: bool = True) -> ssl.SSLContext:
        """A client context that trusts only this CA and, by default, presents the client cert."""
        context = ssl.create_default_context(cafile=str(self.ca_cert))
        if with_client_cert:
            context.load_cert_chain(str(self.client_cert), str(self.client_key))
        return context


def make_test_pki(
    directory: Path | str,
    *,
    hosts: tuple[str, ...] = _DEFAULT_HOSTS,
    client_name: str = "fdpush test client",
    valid_days: int = 30,
    extra_clients: tuple[str, ...] = (),
) -> TestPki:
    """Write a fresh CA, a server cert for ``hosts`` and a client cert into ``directory``.

    Files (absolute paths): ``ca.pem``, ``ca.key``, ``server.pem``, ``server.key``,
    ``client.pem``, ``client.key`` (keys mode 0600), and ``client-<name>.pem``/``.key`` for
    each of ``extra_clients``. Existing files of those names are replaced.
    """
    directory = Path(directory).resolve()
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.datetime.now(datetime.UTC)
    not_before = now - datetime.timedelta(minutes=5)  # tolerate a little clock skew
    not_after = now + datetime.timedelta(days=valid_days)

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "fdpush throwaway test CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
        .sign(ca_key, hashes.SHA256())
    )

    def issue(
        common_name: str, usage: x509.ObjectIdentifier, names: list[x509.GeneralName]
    ) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
        key = ec.generate_private_key(ec.SECP256R1())
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(not_before)
            .not_valid_after(not_after)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        return builder.sign(ca_key, hashes.SHA256()), key

    server_cert, server_key = issue(
        hosts[0] if hosts else "localhost", ExtendedKeyUsageOID.SERVER_AUTH, _alt_names(hosts)
    )
    client_cert, client_key = issue(client_name, ExtendedKeyUsageOID.CLIENT_AUTH, [])

    pki = TestPki(
        directory=directory,
        ca_cert=directory / "ca.pem",
        ca_key=directory / "ca.key",
        server_cert=directory / "server.pem",
        server_key=directory / "server.key",
        client_cert=directory / "client.pem",
        client_key=directory / "client.key",
    )
    _write_cert(pki.ca_cert, ca_cert)
    _write_key(pki.ca_key, ca_key)
    _write_cert(pki.server_cert, server_cert)
    _write_key(pki.server_key, server_key)
    _write_cert(pki.client_cert, client_cert)
    _write_key(pki.client_key, client_key)
    for name in extra_clients:
        cert, key = issue(name, ExtendedKeyUsageOID.CLIENT_AUTH, [x509.DNSName(f"{name}.san.test")])
        paths = (directory / f"client-{name}.pem", directory / f"client-{name}.key")
        _write_cert(paths[0], cert)
        _write_key(paths[1], key)
        pki.named_clients[name] = paths
    return pki


def _alt_names(hosts: tuple[str, ...]) -> list[x509.GeneralName]:
    names: list[x509.GeneralName] = []
    for host in hosts:
        try:
            names.append(x509.IPAddress(ipaddress.ip_address(host)))
        except ValueError:
            names.append(x509.DNSName(host))
    return names


def _write_cert(path: Path, cert: x509.Certificate) -> None:
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def _write_key(path: Path, key: ec.EllipticCurvePrivateKey) -> None:
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(pem)
