"""Shared fixtures: the real service in its own process, over real HTTP, on SQLite and PostgreSQL.

- ``backend`` is ``sqlite`` or ``postgresql``; every test that uses a service runs on both.
  PostgreSQL comes from ``FDPUSH_TEST_POSTGRES_URL`` (default: the local server). Without one
  the PostgreSQL variants are skipped with a notice — except on CI (``CI=true``), where a
  missing PostgreSQL fails the run.
- ``service`` is a running ``fdpush serve`` with the default test configuration;
  ``start_service(**overrides)`` starts another one with other settings. Each service has a
  fresh database of its own. Tests keep out of each other's way by using fresh user ids
  (``new_user()``), so one service can serve a whole module. A service is a process of its
  own, forked from one that has imported fdpush once (``service_fork.py``): the command's
  start without its second of imports.
"""

from __future__ import annotations

import base64
import os
import socket
import sqlite3
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest

from fdpush.gateway import DevGateway, GatewayThread, TestPki, make_test_pki
from fdpush.gateway.runner import stop_process
from service_fork import ForkedCommand, stop_fork_server

DEV_SECRET = "test-secret-0123456789abcdef0123456789"
ALLOWLIST = "gateway.test;gw2.test:8443;127.0.0.1:8443"
CHANNELS = "erp.task.activate=enabled,erp.communication.new,erp.task.close=disabled"
DEFAULT_ENV = {
    "FDPUSH_AUTH_MODE": "dev",
    "FDPUSH_AUTH_DEV_SECRET": DEV_SECRET,
    "FDPUSH_GATEWAY_ALLOWLIST": ALLOWLIST,
    "FDPUSH_CHANNELS": CHANNELS,
    "FDPUSH_RATE_LIMIT": "0",
    "FDPUSH_LOG_LEVEL": "info",
    # Test files run in parallel processes, each with services of its own: PostgreSQL's 100
    # connections are shared out (a test that needs more sets it).
    "FDPUSH_DATABASE_POOL_SIZE": "6",
}
POSTGRES_ADMIN_URL = os.environ.get(
    "FDPUSH_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
ON_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
STARTUP_DEADLINE = 30.0


# --- PostgreSQL ------------------------------------------------------------------------------

_postgres_state: dict[str, Any] = {}


def postgres_available() -> str | None:
    """None when PostgreSQL answers, else why not (cached)."""
    if "reason" not in _postgres_state:
        try:
            import psycopg

            with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=3) as conn:
                conn.execute("SELECT 1")
            _postgres_state["reason"] = None
        except Exception as exc:
            _postgres_state["reason"] = f"{type(exc).__name__}: {exc}".strip()
    return _postgres_state["reason"]


def create_postgres_database() -> str:
    """A fresh, empty database; returns its URL."""
    import psycopg

    name = f"fdpush_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_ADMIN_URL.partition("?")
    return base.rsplit("/", 1)[0] + "/" + name


def drop_postgres_database(url: str) -> None:
    import psycopg

    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def pytest_report_header(config: pytest.Config) -> list[str]:
    reason = postgres_available()
    if reason is None:
        return [f"PostgreSQL: {POSTGRES_ADMIN_URL} (the postgresql variants run)"]
    return [
        f"NOTICE: PostgreSQL unreachable at {POSTGRES_ADMIN_URL} ({reason}); "
        + ("this fails on CI" if ON_CI else "the postgresql variants are SKIPPED")
    ]


@pytest.fixture(scope="session", params=["sqlite", "postgresql"])
def backend(request: pytest.FixtureRequest) -> str:
    if request.param == "postgresql":
        reason = postgres_available()
        if reason is not None:
            if ON_CI:
                pytest.fail(f"CI must run the PostgreSQL tests, but PostgreSQL is down: {reason}")
            pytest.skip(f"PostgreSQL unreachable ({reason}); set FDPUSH_TEST_POSTGRES_URL")
    return str(request.param)


# --- the service -----------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def dev_token(user_id: str, *, ttl: int = 3600, secret: str = DEV_SECRET, **claims: Any) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user_id, "iat": now, "exp": now + ttl, **claims}, secret, "HS256")


def new_user() -> str:
    return f"user-{uuid.uuid4().hex[:12]}"


class Service:
    """A running ``fdpush serve`` process and ways to talk to it and to look at its database."""

    def __init__(self, env: dict[str, str], database_url: str, workdir: Path) -> None:
        self.env = env
        self.database_url = database_url
        self.workdir = workdir
        self.port = int(env["FDPUSH_PORT"])
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "service.log"
        self._log = self.log_path.open("wb")
        self.process: subprocess.Popen[bytes] | ForkedCommand
        if int(env.get("FDPUSH_WORKERS", "1")) > 1:  # a supervisor of spawned processes
            self.process = subprocess.Popen(
                [sys.executable, "-m", "fdpush", "serve"],
                env=env,
                cwd=workdir,
                stdout=self._log,
                stderr=subprocess.STDOUT,
            )
        else:  # the same command, without a second of imports (tests/service_fork.py)
            self.process = ForkedCommand(["serve"], env=env, cwd=workdir, output=self.log_path)
        self._wait_ready()

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + STARTUP_DEADLINE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"fdpush serve exited early:\n{self.logs()}")
            try:
                if httpx.get(self.base_url + "/health/ready", timeout=1.0).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"fdpush serve not ready within {STARTUP_DEADLINE}s:\n{self.logs()}")

    def logs(self) -> str:
        self._log.flush()
        return self.log_path.read_text(errors="replace")

    def stop(self) -> None:
        stop_process(self.process)  # type: ignore[arg-type]  # ForkedCommand: Popen's interface
        self._log.close()

    def client(self, user_id: str | None = None, **kwargs: Any) -> httpx.Client:
        """An HTTP client, authenticated as ``user_id`` when one is given."""
        headers = {"Authorization": f"Bearer {dev_token(user_id)}"} if user_id else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=30.0, **kwargs)

    def query(self, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        """Run SQL on the service's database (``?`` placeholders) with a driver of its own."""
        if self.database_url.startswith("sqlite"):
            path = self.database_url.removeprefix("sqlite:///")
            with sqlite3.connect(path) as conn:
                return list(conn.execute(sql, params))
        import psycopg

        with psycopg.connect(self.database_url) as conn:
            cursor = conn.execute(sql.replace("?", "%s"), params)
            return list(cursor) if cursor.description is not None else []

    def master_key(self) -> bytes:
        path = Path(self.env.get("FDPUSH_MASTER_KEY_FILE", self.workdir / "master.key"))
        return base64.b64decode(path.read_text())

    def pseudonym(self, user_id: str) -> str:
        """What the database holds for ``user_id`` (only its keyed pseudonym)."""
        from fdpush.crypto import IdentityKeys, user_pseudonym

        return user_pseudonym(IdentityKeys.derive(self.master_key()), user_id)

    def pushkey_index(self, pushkey: str) -> str:
        """What the database's ``pushkey`` columns hold for ``pushkey`` (its keyed index)."""
        from fdpush.crypto import IdentityKeys, pushkey_index

        return pushkey_index(IdentityKeys.derive(self.master_key()), pushkey)


def pytest_sessionfinish(session: pytest.Session) -> None:
    stop_fork_server()


@pytest.fixture(scope="module")
def start_service(
    backend: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., Service]]:
    """Start ``fdpush serve`` with the test defaults plus ``overrides`` (FDPUSH_* names)."""
    started: list[Service] = []
    databases: list[str] = []

    def start(**overrides: str) -> Service:
        workdir = tmp_path_factory.mktemp("service")
        if backend == "postgresql":
            database_url = create_postgres_database()
            databases.append(database_url)
        else:
            database_url = f"sqlite:///{workdir / 'fdpush.db'}"
        # The key exists before the start: outside dev mode fdpush never makes one.
        key_file = os.open(workdir / "master.key", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        os.write(key_file, base64.b64encode(os.urandom(32)))
        os.close(key_file)
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")},
            **DEFAULT_ENV,
            "FDPUSH_DATABASE_URL": database_url,
            "FDPUSH_MASTER_KEY_FILE": str(workdir / "master.key"),
            "FDPUSH_PORT": str(free_port()),
            **overrides,
        }
        service = Service(env, database_url, workdir)
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()
    for url in databases:
        drop_postgres_database(url)


@pytest.fixture(scope="module")
def service(start_service: Callable[..., Service]) -> Service:
    """The service with the default test configuration, shared by a test module."""
    return start_service()


# --- the Push Gateway side --------------------------------------------------------------------


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    """A throwaway CA, the gateways' server certificate and the service's client certificate."""
    return make_test_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def gateway(pki: TestPki) -> Iterator[GatewayThread]:
    """A development Push Gateway in this process: HTTPS, client certificates required."""
    running = GatewayThread(DevGateway(), pki=pki)
    yield running
    running.stop()


# --- requests --------------------------------------------------------------------------------

GATEWAY_URL = "https://gateway.test/push/v1/"


def registration(pushkey: str | None = None, **overrides: Any) -> dict[str, Any]:
    """A valid ``pushers/set`` body with a fresh iss; ``overrides`` replace or add fields."""
    body: dict[str, Any] = {
        "kind": "http",
        "app_id": "de.gematik.test.apns",
        "pushkey": pushkey or f"pk-{uuid.uuid4().hex}",
        "app_display_name": "Test App",
        "device_display_name": "Test Phone",
        "lang": "de",
        "data": {"url": GATEWAY_URL, "format": "event_id_only"},
        "encryption": {
            "method": "aes-hmac-sha256",
            "iss": os.urandom(32).hex(),
            "time_iss_created": time.strftime("%Y-%m"),
            "key_identifier": str(uuid.uuid4()),
        },
    }
    body.update(overrides)
    return body
