"""``/docs`` works without internet, can be switched off, and the OpenAPI document names each
operation's credential.

In-process (the app over ASGI, SQLite in a temporary folder), except the last test: the real
service and headless Chromium (Debian's package; ``./dev test`` installs it), which may reach
nothing but the service.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import DEFAULT_ENV, DEV_SECRET, ON_CI, Service, free_port
from fdpush.config import Settings
from fdpush.web.app import create_app, create_internal_app


def make_settings(tmp_path: Path, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "auth_mode": "dev",
        "auth_dev_secret": DEV_SECRET,
        "database_url": f"sqlite:///{tmp_path / 'fdpush.db'}",
        "master_key_file": tmp_path / "master.key",
        "channels": "erp.task.activate",
        "serve_worker": False,
        **overrides,
    }
    return Settings(_env_prefix="FDPUSH_TEST_UNUSED_", _env_file=None, **values)  # type: ignore[call-arg]


class Client:
    """GETs against an app in this process, inside its lifespan (so migrations have run)."""

    def __init__(self, app: FastAPI, lifespan: FastAPI | None = None) -> None:
        self.app, self.lifespan = app, lifespan or app

    def get(self, path: str) -> httpx.Response:
        async def fetch() -> httpx.Response:
            async with self.lifespan.router.lifespan_context(self.lifespan):
                transport = httpx.ASGITransport(app=self.app)
                async with httpx.AsyncClient(transport=transport, base_url="http://fd") as http:
                    return await http.get(path)

        return asyncio.run(fetch())


@pytest.fixture
def client(tmp_path: Path) -> Iterator[Client]:
    yield Client(create_app(make_settings(tmp_path), access_log=False))


def test_docs_page_loads_swagger_ui_from_the_service_itself(client: Client) -> None:
    page = client.get("/docs")
    assert page.status_code == 200
    sources = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert sources, page.text
    for source in sources:
        assert source.startswith("/"), f"{source} is not served by fdpush (a CDN?)"
        asset = client.get(source)
        assert asset.status_code == 200, source
        assert len(asset.content) > 1000, source
    bundle = client.get(next(s for s in sources if s.endswith("swagger-ui-bundle.js"))).text
    version = re.search(r'PACKAGE_VERSION:"(\d+)\.(\d+)\.(\d+)"', bundle)
    assert version is not None
    assert int(version.group(1)) >= 5  # Swagger UI 4 cannot render OpenAPI 3.1
    assert client.get("/openapi.json").json()["openapi"].startswith("3.1")
    assert "/openapi.json" in page.text
    assert "cdn" not in page.text.lower()


def test_docs_and_openapi_can_be_switched_off(tmp_path: Path) -> None:
    client = Client(create_app(make_settings(tmp_path, api_docs=False), access_log=False))
    for path in ("/docs", "/openapi.json", "/docs/assets/swagger-ui-bundle.js"):
        assert client.get(path).status_code == 404, path
    assert client.get("/health/live").status_code == 200


def security_of(document: dict[str, Any]) -> dict[tuple[str, str], list[dict[str, list[str]]]]:
    return {
        (path, method): operation.get("security", [])
        for path, item in document["paths"].items()
        for method, operation in item.items()
    }


def test_each_operation_names_its_credential(client: Client) -> None:
    document = client.get("/openapi.json").json()
    schemes = document["components"]["securitySchemes"]
    assert schemes["UserToken"]["scheme"] == "bearer"
    assert schemes["InternalApiKey"]["scheme"] == "bearer"
    security = security_of(document)
    assert security[("/push/v1/pushers", "get")] == [{"UserToken": []}]
    assert security[("/pushers/v1/set", "post")] == [{"UserToken": []}]
    assert security[("/internal/v1/events", "post")] == [{"InternalApiKey": []}]
    assert security[("/health/ready", "get")] == []
    assert security[("/metrics", "get")] == []
    for (path, _method), named in security.items():
        if path.startswith(("/push/v1/", "/pushers/v1", "/channels/v1")):
            assert named == [{"UserToken": []}], path


def test_the_internal_listeners_document_names_only_the_internal_key(tmp_path: Path) -> None:
    settings = make_settings(tmp_path, internal_port=0)
    main = create_app(settings, access_log=False)
    internal: FastAPI = create_internal_app(main, settings, access_log=False)
    main_document = Client(main).get("/openapi.json").json()
    internal_document = Client(internal, lifespan=main).get("/openapi.json").json()
    assert set(main_document["components"]["securitySchemes"]) == {"UserToken"}
    assert set(internal_document["components"]["securitySchemes"]) == {"InternalApiKey"}
    assert Client(internal, lifespan=main).get("/docs").status_code == 200


# --- the page as a browser draws it -------------------------------------------------------------


@pytest.fixture(scope="module")
def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        message = "chromium not found (Debian: apt-get install chromium; ./dev test does)"
        if ON_CI:
            pytest.fail(message)
        pytest.skip(message)
    return found


def browse(chromium: str, url: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Headless Chromium on ``url``; scripts get five seconds of (virtual) time to draw."""
    return subprocess.run(
        [
            chromium,
            "--headless",
            "--no-sandbox",  # tests run as root
            "--disable-gpu",
            "--no-first-run",
            "--virtual-time-budget=5000",
            *args,
            url,
        ],
        capture_output=True,
        text=True,
        timeout=90,
        check=False,
    )


def test_swagger_ui_draws_every_operation_in_a_browser(
    chromium: str, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """The real service, and a browser that reaches nothing but it: Swagger UI draws one block
    per operation of the document (no asset from the internet, or the page would stay blank)."""
    workdir = tmp_path_factory.mktemp("docs-service")
    env = {
        **{k: v for k, v in os.environ.items() if not k.startswith("FDPUSH_")},
        **DEFAULT_ENV,
        "FDPUSH_DATABASE_URL": f"sqlite:///{workdir / 'fdpush.db'}",
        "FDPUSH_MASTER_KEY_FILE": str(workdir / "master.key"),
        "FDPUSH_PORT": str(free_port()),
    }
    service = Service(env, env["FDPUSH_DATABASE_URL"], workdir)
    try:
        document = httpx.get(service.base_url + "/openapi.json", timeout=10).json()
        operations = sum(len(item) for item in document["paths"].values())
        # Any address but the service's is unreachable for this browser: proof of "offline".
        offline = "--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1"
        dom = browse(chromium, service.base_url + "/docs", offline, "--dump-dom")
        assert dom.returncode == 0, dom.stderr[-2000:]
        drawn = re.findall(r'class="opblock opblock-(get|post|put|delete|patch)', dom.stdout)
        assert len(drawn) == operations, dom.stdout[-2000:]
        assert "Authorize" in dom.stdout  # the security schemes reached the page
        shot = workdir / "docs.png"
        browse(chromium, service.base_url + "/docs", offline, f"--screenshot={shot}")
        assert shot.stat().st_size > 20_000  # a drawn page, not a blank one
    finally:
        service.stop()
