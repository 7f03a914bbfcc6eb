"""Fixtures for the development gateway's tests: a throwaway PKI, and the gateway as a real
``fdpush gateway`` process over mutual TLS. (This directory is a package, so this conftest does
not shadow the suite's top-level ``conftest`` module; helpers live in ``gateway.helpers``.)
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from fdpush.gateway import GatewayProcess, TestPki, make_test_pki

# --- the gateway -------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA with a server certificate for 127.0.0.1/localhost and a client cert."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def gateway_process(
    pki: TestPki, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[GatewayProcess]:
    """``fdpush gateway`` over HTTPS, client certificates required, shared by a module."""
    running = GatewayProcess(tmp_path_factory.mktemp("gateway"), pki=pki)
    yield running
    running.stop()


@pytest.fixture
def gateway(gateway_process: GatewayProcess) -> GatewayProcess:
    """The module's gateway with every switch off, counters zeroed and the inbox empty."""
    gateway_process.reset_trouble()
    gateway_process.reset_stats()
    gateway_process.clear()
    return gateway_process
