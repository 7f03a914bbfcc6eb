"""The ZETA settings: technical users, trusted proxies, and the TLS files that go together."""

from __future__ import annotations

import os
from ipaddress import ip_network
from pathlib import Path

import pytest

from fdpush.config import ConfigError, RsClient, Settings, load_settings


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.startswith("FDPUSH_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def load(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return load_settings(for_serving=False)


def test_technical_users_and_their_channels(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(
        monkeypatch, FDPUSH_RS_CLIENTS=" erp=erp.task.*, erp.communication.new ; epa=* "
    )
    assert settings.rs_clients == (
        RsClient("erp", ("erp.task.*", "erp.communication.new")),
        RsClient("epa", ("*",)),
    )
    erp, epa = settings.rs_clients
    assert erp.may_send("erp.task.activate") and erp.may_send("erp.communication.new")
    assert not erp.may_send("erp.communication.newer") and not erp.may_send("epa.documents")
    assert epa.may_send("anything")


@pytest.mark.parametrize("value", ["erp", "erp=", "=x", "a=x;a=y"])
def test_bad_technical_users_are_refused(monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    with pytest.raises(ConfigError, match="FDPUSH_RS_CLIENTS"):
        load(monkeypatch, FDPUSH_RS_CLIENTS=value)


def test_trusted_proxies(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, FDPUSH_AUTH_ZETA_TRUSTED_PROXIES="10.0.0.0/8, 192.0.2.7,::1")
    assert settings.auth_zeta_trusted_proxies == (
        ip_network("10.0.0.0/8"),
        ip_network("192.0.2.7/32"),
        ip_network("::1/128"),
    )
    with pytest.raises(ConfigError, match="FDPUSH_AUTH_ZETA_TRUSTED_PROXIES"):
        load(monkeypatch, FDPUSH_AUTH_ZETA_TRUSTED_PROXIES="pep.example")


def test_zeta_mode_needs_a_way_to_trust_the_pep(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = load(monkeypatch, FDPUSH_AUTH_MODE="zeta")
    with pytest.raises(ConfigError, match="FDPUSH_AUTH_ZETA_TRUSTED_PROXIES"):
        settings.check_auth()
    load(monkeypatch, FDPUSH_AUTH_ZETA_TRUSTED_PROXIES="127.0.0.1").check_auth()


def test_tls_files_go_together(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    pem = tmp_path / "x.pem"
    pem.write_text("not checked here")
    partial = load(monkeypatch, FDPUSH_INTERNAL_TLS_CERT=str(pem), FDPUSH_INTERNAL_PORT="8443")
    with pytest.raises(ConfigError, match="go together"):
        partial.internal_tls()
    whole = load(
        monkeypatch,
        FDPUSH_INTERNAL_TLS_KEY=str(pem),
        FDPUSH_INTERNAL_TLS_CLIENT_CA=str(tmp_path / "missing.pem"),
    )
    with pytest.raises(ConfigError, match="no such file"):
        whole.internal_tls()
    monkeypatch.delenv("FDPUSH_INTERNAL_PORT")
    monkeypatch.setenv("FDPUSH_INTERNAL_TLS_CLIENT_CA", str(pem))
    with pytest.raises(ConfigError, match="FDPUSH_INTERNAL_PORT"):
        load_settings(for_serving=False).internal_tls()
    monkeypatch.setenv("FDPUSH_INTERNAL_PORT", "8443")
    assert load_settings(for_serving=False).internal_tls() is True
    assert load_settings(for_serving=False).client_tls() is False
