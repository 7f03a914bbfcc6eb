"""``/docs`` works without internet, can be switched off, and the OpenAPI document names each
operation's credential.

In-process (the app over ASGI, SQLite in a temporary folder): nothing here needs a socket.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi import FastAPI

from conftest import DEV_SECRET
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
