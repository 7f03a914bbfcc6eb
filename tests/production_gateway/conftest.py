"""Fixtures for the production gateway: the mock APNs and FCM, and gateways in front of them.

Everything runs over real TLS on loopback: the Fachdienst's client talks HTTP/1.1 + mTLS to the
gateway, the gateway HTTP/2 + TLS (ALPN h2) to the mocks. One PKI serves all of them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from fdpush.gateway import TestPki, make_test_pki
from fdpush.gateway.production import GatewayConfig, ProductionGatewayThread
from fdpush.testing import ApnsKey, MockApns, MockFcm, make_apns_key

APNS_APP = "de.gematik.erezept.apns"
APNS_TOPIC = "de.gematik.erezept"
OTHER_APNS_APP = "de.example.other.apns"
FCM_APP = "de-gematik-erezept.erezept.firebase"
FCM_PROJECT = "de-gematik-erezept"
OTHER_FCM_APP = "other-project.app.firebase"
TEAM_ID = "TEAM000001"
KEY_ID = "KEY0000001"
OTHER_KEY_ID = "KEY0000002"


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA, a server certificate for 127.0.0.1 and a Fachdienst client certificate."""
    return make_test_pki(tmp_path_factory.mktemp("pki"), client_name="erp.fachdienst.test")


@pytest.fixture(scope="session")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ApnsKey]:
    """Two APNs signing keys of one team (one per iOS app)."""
    directory = tmp_path_factory.mktemp("apns-keys")
    return {
        key_id: make_apns_key(directory, team_id=TEAM_ID, key_id=key_id)
        for key_id in (KEY_ID, OTHER_KEY_ID)
    }


@pytest.fixture(scope="module")
def apns_server(pki: TestPki, keys: dict[str, ApnsKey]) -> Iterator[MockApns]:
    """A mock APNs that knows both keys."""
    with MockApns(pki) as apns:
        apns.add_key(keys[KEY_ID], topics=[APNS_TOPIC])
        apns.add_key(keys[OTHER_KEY_ID], topics=["de.example.other"])
        yield apns


@pytest.fixture(scope="module")
def fcm_server(
    pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[MockFcm, dict[str, Path]]]:
    """A mock FCM with a service account for each of two projects."""
    directory = tmp_path_factory.mktemp("fcm-accounts")
    with MockFcm(pki) as fcm:
        accounts = {
            FCM_APP: fcm.add_service_account(directory, FCM_PROJECT),
            OTHER_FCM_APP: fcm.add_service_account(directory, "other-project"),
        }
        yield fcm, accounts


@pytest.fixture
def apns(apns_server: MockApns) -> MockApns:
    """The module's mock APNs with every switch off and an empty record."""
    apns_server.reset()
    return apns_server


@pytest.fixture
def fcm(fcm_server: tuple[MockFcm, dict[str, Path]]) -> MockFcm:
    """The module's mock FCM with every switch off and an empty record."""
    fcm_server[0].reset()
    return fcm_server[0]


def gateway_config(
    pki: TestPki,
    keys: dict[str, ApnsKey],
    apns_server: MockApns,
    fcm_server: tuple[MockFcm, dict[str, Path]],
    **overrides: Any,
) -> GatewayConfig:
    """A production configuration for the mocks; ``overrides`` replace top-level sections
    (``delivery={...}`` is merged into the defaults used here)."""
    fcm, accounts = fcm_server
    document: dict[str, Any] = {
        "mode": "production",
        "log_format": "text",
        "listen": {
            "host": "127.0.0.1",
            "port": 0,
            "cert": pki.server_cert,
            "key": pki.server_key,
            "client_ca": pki.ca_cert,
        },
        "delivery": {
            "answer_within_seconds": 5,
            "retry_base_seconds": 0.05,
            "retry_max_seconds": 0.5,
        },
        "apns": {"url": apns_server.url, "ca_file": pki.ca_cert},
        "fcm": {"url": fcm.url, "ca_file": pki.ca_cert},
        "apns_apps": [
            {
                "app_id": APNS_APP,
                "key_file": keys[KEY_ID].path,
                "key_id": KEY_ID,
                "team_id": TEAM_ID,
            },
            {
                "app_id": OTHER_APNS_APP,
                "key_file": keys[OTHER_KEY_ID].path,
                "key_id": OTHER_KEY_ID,
                "team_id": TEAM_ID,
            },
        ],
        "fcm_apps": [
            {"app_id": FCM_APP, "service_account": accounts[FCM_APP]},
            {"app_id": OTHER_FCM_APP, "service_account": accounts[OTHER_FCM_APP]},
        ],
    }
    for name, value in overrides.items():
        if isinstance(value, dict) and isinstance(document.get(name), dict):
            document[name] = {**document[name], **value}
        else:
            document[name] = value
    return GatewayConfig.model_validate(document)


StartGateway = Callable[..., ProductionGatewayThread]


@pytest.fixture(scope="module")
def start_gateway(
    pki: TestPki,
    keys: dict[str, ApnsKey],
    apns_server: MockApns,
    fcm_server: tuple[MockFcm, dict[str, Path]],
) -> Iterator[StartGateway]:
    """``start_gateway(clock=..., wall_clock=..., **config_overrides)``: a new production
    gateway in front of the module's mocks, stopped at the end of the module."""
    running: list[ProductionGatewayThread] = []

    def start(
        clock: Callable[[], float] | None = None,
        wall_clock: Callable[[], float] | None = None,
        **overrides: Any,
    ) -> ProductionGatewayThread:
        config = gateway_config(pki, keys, apns_server, fcm_server, **overrides)
        gateway = ProductionGatewayThread(config, clock=clock, wall_clock=wall_clock)
        running.append(gateway)
        return gateway

    yield start
    for gateway in running:
        gateway.stop()


@pytest.fixture(scope="module")
def gateway(start_gateway: StartGateway) -> ProductionGatewayThread:
    """The module's production gateway with the default test configuration."""
    return start_gateway()


def client_for(
    gateway: ProductionGatewayThread, pki: TestPki, *, with_client_cert: bool = True
) -> httpx.Client:
    """An HTTP client for the gateway, as a Fachdienst (trusting the CA, presenting its cert)."""
    context = pki.client_ssl_context(with_client_cert=with_client_cert)
    return httpx.Client(base_url=gateway.url, verify=context, timeout=30)


@pytest.fixture
def client(gateway: ProductionGatewayThread, pki: TestPki) -> Iterator[httpx.Client]:
    """A Fachdienst's client of the module's gateway."""
    with client_for(gateway, pki) as http:
        yield http
