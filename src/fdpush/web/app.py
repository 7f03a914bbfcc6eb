"""The ASGI application: the client API, health, metrics and the OpenAPI document."""

from __future__ import annotations

import inspect
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from fdpush import __version__, heap
from fdpush.config import Settings
from fdpush.domain.keyring import KeyringError
from fdpush.services import API_POOL_SIZE, Services
from fdpush.web.admin_api import admin_router
from fdpush.web.auth import Authenticator
from fdpush.web.client_api import (
    SECURITY_SCHEME,
    SECURITY_SCHEME_OBJECT,
    ClientApi,
    client_router,
    request_body_models,
)
from fdpush.web.docs import add_docs, add_security_schemes
from fdpush.web.errors import install_error_handlers
from fdpush.web.health import Readiness
from fdpush.web.internal_api import InternalApi, internal_body_models, internal_router
from fdpush.web.middleware import BodyLimitMiddleware, HttpMetrics, ObserveMiddleware
from fdpush.web.paths import RawPathGuard, parameter_prefixes
from fdpush.web.ratelimit import UserRateLimiter
from fdpush.web.request_id import RequestIdMiddleware
from fdpush.web.responses import JsonResponse
from fdpush.web.zeta_api import RS_BASE_PATH, RsAccess, create_rs_app

__all__ = ["create_app", "create_internal_app"]

log = logging.getLogger(__name__)

# FastAPI's own OpenTelemetry instrumentation (newer FastAPI versions) asks the global
# providers on every request; the service exports Prometheus metrics instead.
_NO_TELEMETRY: dict[str, Any] = (
    {"telemetry": {"tracing": False, "metrics": False, "logs": False}}
    if "telemetry" in inspect.signature(FastAPI.__init__).parameters
    else {}
)


def create_app(
    settings: Settings, *, access_log: bool = True, metrics_dir: Path | None = None
) -> FastAPI:
    """Build the service. Configuration problems raise ``ConfigError`` here, before serving.

    The client API always; the internal (events) API too unless ``FDPUSH_INTERNAL_PORT`` gives
    it a listener of its own (:func:`create_internal_app`); the delivery worker runs in the
    app's lifespan unless ``FDPUSH_SERVE_WORKER=0``. ``metrics_dir``: this is one of several
    API processes, whose metrics prometheus-client keeps in that directory; ``/metrics`` then
    answers for all of them.
    """
    authenticator = Authenticator(settings)  # first: a bad auth setup must not leave a key file
    settings.check_delivery()
    services = Services.build(settings, worker=settings.serve_worker, pool_size=API_POOL_SIZE)
    internal_tls = settings.internal_tls()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await services.prepare()
        except KeyringError as exc:
            log.error("not started: %s", exc)  # the one line that says what to do
            raise
        if authenticator.mode == "dev":
            log.warning(
                "DEV AUTHENTICATION: any holder of FDPUSH_AUTH_DEV_SECRET can act as any user. "
                "Never run this way in production."
            )
        if not settings.gateway_allowlist:
            log.warning("FDPUSH_GATEWAY_ALLOWLIST is empty: no pusher can be registered")
        if not settings.channels:
            log.warning("FDPUSH_CHANNELS is empty: devices have no channel to subscribe to")
        if settings.internal_api_key is None:
            log.warning("FDPUSH_INTERNAL_API_KEY is not set: the events API refuses every call")
        if not internal_tls:
            log.warning(
                "The RS API (%s) runs without client certificates: the internal API key is one "
                "technical user allowed every channel (development only)",
                RS_BASE_PATH,
            )
            if settings.rs_clients:
                log.warning("FDPUSH_RS_CLIENTS is ignored without FDPUSH_INTERNAL_TLS_*")
        elif not settings.rs_clients:
            log.warning("FDPUSH_RS_CLIENTS is empty: every RS API call is refused (403)")
        if services.worker is not None:
            services.start_worker()
        # What exists now lives as long as the process: out of the collector's passes, which
        # otherwise walk all of it and show up as tens of milliseconds at p99 (fdpush.heap).
        heap.settle()
        try:
            yield
        finally:
            await services.close()

    app = FastAPI(
        title="fdpush: Client-FD Push API",
        version=__version__,
        description="The push part of a Fachdienst: pushers, channels and key registration. "
        "Both published layouts are served: the seed layout (/pushers/v1, /channels/v1) and "
        "the current one (/push/v1/pushers, /push/v1/channels).",
        lifespan=lifespan,
        redirect_slashes=False,
        default_response_class=JsonResponse,
        openapi_url="/openapi.json" if settings.api_docs else None,
        docs_url=None,  # add_docs: Swagger UI from the package, not a CDN
        redoc_url=None,
        **_NO_TELEMETRY,
    )
    app.state.client_api = ClientApi(
        pushers=services.pushers,
        channels=services.channels,
        authenticator=authenticator,
        limiter=UserRateLimiter(settings.rate_limit),
        encryption_required=settings.encryption == "required",
        history=services.history,
        pseudonym=services.vault.pseudonym,
        pushkey_index=services.vault.pushkey_index,
    )
    app.state.internal_api = InternalApi(
        events=services.events,
        users=services.users,
        pseudonym=services.vault.pseudonym,
        api_key=(
            None
            if settings.internal_api_key is None
            else settings.internal_api_key.get_secret_value()
        ),
        max_events_per_batch=settings.max_events_per_batch,
    )
    app.state.rs_app = create_rs_app(
        services.rs,
        RsAccess(
            clients=settings.rs_clients,
            tls=internal_tls,
            api_key=app.state.internal_api.api_key,
        ),
        UserRateLimiter(settings.rs_rate_limit),
        api_docs=settings.api_docs,
    )
    install_error_handlers(app)
    client = client_router(settings.base_path)
    # The client API's routes themselves, not the router included: an included router matches
    # each request twice over (about a tenth of the CPU of GET channels/{pushkey}).
    app.router.routes.extend(client.routes)
    routers = [client]
    if settings.internal_port is None:
        routers += [internal_router(), admin_router()]
        for router in routers[1:]:
            app.include_router(router)
    if settings.internal_port is None:
        app.mount(RS_BASE_PATH, app.state.rs_app)
    readiness = Readiness(
        services.db,
        services.worker,
        max_pending_age_seconds=settings.ready_max_pending_age_seconds,
        max_worker_silence_seconds=settings.ready_max_worker_silence_seconds,
    )
    _add_operations_routes(app, readiness, services.metrics, metrics_dir)
    if settings.api_docs:
        add_docs(app)
    _document_request_bodies(app)
    app.state.http_metrics = HttpMetrics(services.metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RawPathGuard, prefixes=parameter_prefixes(*routers))
    app.add_middleware(
        ObserveMiddleware, metrics=app.state.http_metrics, access_log_enabled=access_log
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: the access line carries the id too
    return app


def create_internal_app(main: FastAPI, settings: Settings, *, access_log: bool = True) -> FastAPI:
    """The internal API alone, for its own listener; shares ``main``'s services and lifespan."""
    app = FastAPI(
        title="fdpush: internal events API",
        version=__version__,
        default_response_class=JsonResponse,
        redirect_slashes=False,
        openapi_url="/openapi.json" if settings.api_docs else None,
        docs_url=None,
        redoc_url=None,
        **_NO_TELEMETRY,
    )
    app.state.internal_api = main.state.internal_api
    install_error_handlers(app)
    routers = [internal_router(), admin_router()]
    for router in routers:
        app.include_router(router)
    app.mount(RS_BASE_PATH, main.state.rs_app)
    if settings.api_docs:
        add_docs(app)
    _document_request_bodies(app)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RawPathGuard, prefixes=parameter_prefixes(*routers))
    app.add_middleware(
        ObserveMiddleware, metrics=main.state.http_metrics, access_log_enabled=access_log
    )
    app.add_middleware(RequestIdMiddleware)
    return app


def _add_operations_routes(
    app: FastAPI, readiness: Readiness, registry: CollectorRegistry, metrics_dir: Path | None
) -> None:
    @app.get("/health/live", tags=["Operations"], summary="The process is up")
    async def live() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/health/ready",
        tags=["Operations"],
        summary="The database answers; this process's worker delivers (503 and the failing check "
        "otherwise)",
    )
    async def ready() -> JsonResponse:
        ok, body = await readiness.check()
        return JsonResponse(body, status_code=200 if ok else 503)

    @app.get("/metrics", tags=["Operations"], summary="Prometheus metrics")
    async def metrics() -> Response:
        if metrics_dir is None:
            body = generate_latest(registry)
        else:  # every process's files, merged (process_* metrics exist per process only)
            merged = CollectorRegistry()
            MultiProcessCollector(merged, path=str(metrics_dir))  # type: ignore[no-untyped-call]
            body = generate_latest(merged)
        return Response(body, media_type=CONTENT_TYPE_LATEST)


def _document_request_bodies(app: FastAPI) -> None:
    """Handlers read raw bodies (to answer Matrix errors) and the client API checks its tokens
    itself: document the models they expect and the bearer scheme."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title,
                version=app.version,
                description=app.description,
                routes=app.routes,
            )
            components = schema.setdefault("components", {}).setdefault("schemas", {})
            # Handlers answer Matrix errors (400), never FastAPI's 422 validation body.
            for path_item in schema.get("paths", {}).values():
                for operation in path_item.values():
                    operation.get("responses", {}).pop("422", None)
                    if {SECURITY_SCHEME: []} in operation.get("security", []):
                        schemes = schema["components"].setdefault("securitySchemes", {})
                        schemes[SECURITY_SCHEME] = SECURITY_SCHEME_OBJECT
            components.pop("HTTPValidationError", None)
            components.pop("ValidationError", None)
            for model in [*request_body_models(), *internal_body_models()]:
                model_schema = model.model_json_schema(
                    ref_template="#/components/schemas/{model}", mode="validation"
                )
                components.update(model_schema.pop("$defs", {}))
                components[model.__name__] = model_schema
            add_security_schemes(schema)
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
