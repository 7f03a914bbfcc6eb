"""The interactive API docs and what the OpenAPI document says about authentication.

Swagger UI (version 5, which renders OpenAPI 3.1) is served from the copy installed with the
package, not from a CDN, so ``/docs`` works on a machine without internet. Each operation names
the credential it takes: the user's token for the client API, the internal key for the events
API, none for health and metrics.
"""

from __future__ import annotations

from importlib.resources import files
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.staticfiles import StaticFiles
from starlette.responses import HTMLResponse

__all__ = ["DOCS_URL", "add_docs", "add_security_schemes"]

DOCS_URL = "/docs"
ASSETS_URL = "/docs/assets"
SECURITY_SCHEMES: dict[str, dict[str, str]] = {
    "UserToken": {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": "The insured person's access token from the identity provider "
        "(FDPUSH_AUTH_MODE=dev: a token from `fdpush token USER`).",
    },
    "InternalApiKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "FDPUSH_INTERNAL_API_KEY: for the Fachdienst's business logic only.",
    },
}
_OPERATIONS_TAG = "Operations"  # health and metrics: no credential


def swagger_ui_assets() -> Path:
    """The folder of Swagger UI's files (``swagger-ui-bundle.js``, ``swagger-ui.css``)."""
    return Path(str(files("fastapi_offline") / "static"))


def add_docs(app: FastAPI) -> None:
    """Serve Swagger UI for ``app``'s OpenAPI document at ``/docs``, assets from the package."""
    app.mount(ASSETS_URL, StaticFiles(directory=swagger_ui_assets()), name="docs-assets")
    openapi_url = app.openapi_url or "/openapi.json"

    @app.get(DOCS_URL, include_in_schema=False)
    async def docs(request: Request) -> HTMLResponse:
        root = str(request.scope.get("root_path", ""))
        return get_swagger_ui_html(
            openapi_url=root + openapi_url,
            title=f"{app.title} (API docs)",
            swagger_js_url=f"{root}{ASSETS_URL}/swagger-ui-bundle.js",
            swagger_css_url=f"{root}{ASSETS_URL}/swagger-ui.css",
            swagger_favicon_url=f"{root}{ASSETS_URL}/favicon.png",
        )


def add_security_schemes(schema: dict[str, Any]) -> None:
    """Name the credential of every operation in ``schema`` (an OpenAPI document, in place)."""
    used: set[str] = set()
    for path, path_item in schema.get("paths", {}).items():
        for operation in path_item.values():
            if _OPERATIONS_TAG in operation.get("tags", ()):
                continue
            scheme = "InternalApiKey" if path.startswith("/internal/") else "UserToken"
            operation["security"] = [{scheme: []}]
            used.add(scheme)
    if used:
        components = schema.setdefault("components", {})
        components["securitySchemes"] = {name: SECURITY_SCHEMES[name] for name in sorted(used)}
