"""The ASGI application: the client API, health, metrics and the OpenAPI document."""

from __future__ import annotations

import asyncio
import gc
import inspect
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import FastAPI, Request, Response
from fastapi.openapi.utils import get_openapi
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)
from prometheus_client.multiprocess import MultiProcessCollector

from fdpush import __version__
from fdpush.config import Settings, resolve_master_key
from fdpush.delivery.setup import make_worker
from fdpush.domain.channels import ChannelService
from fdpush.domain.data_steps import prepare_database
from fdpush.domain.events import EventService
from fdpush.domain.gateway_url import GatewayUrlPolicy
from fdpush.domain.history import HistoryService
from fdpush.domain.keyring import KeyringError
from fdpush.domain.keys import KeyVault
from fdpush.domain.pushers import PusherService
from fdpush.domain.users import UserRequests
from fdpush.domain.zeta import RsService
from fdpush.logs import set_reference_key
from fdpush.storage.database import Database
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
from fdpush.web.internal_api import internal_body_models, internal_router
from fdpush.web.middleware import BodyLimitMiddleware, HttpMetrics, ObserveMiddleware
from fdpush.web.paths import RawPathGuard, parameter_prefixes
from fdpush.web.ratelimit import UserRateLimiter
from fdpush.web.request_id import RequestIdMiddleware
from fdpush.web.responses import JsonResponse
from fdpush.web.zeta_api import RS_BASE_PATH, RsAccess, create_rs_app

__all__ = ["POOL_SIZE", "create_app", "create_internal_app"]

# The default database pool of the service: as many connections as requests in flight at a
# usual load (a write holds its connection while it waits for a lock; with fewer connections
# than such writes, others queue for one and both throughput and p99 suffer).
POOL_SIZE = 32

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
    master_key = resolve_master_key(settings)
    set_reference_key(master_key)
    db = Database(settings.database_url, pool_size=settings.database_pool_size or POOL_SIZE)
    vault = KeyVault(master_key)
    registry = CollectorRegistry()
    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    worker, gateway_client = (
        make_worker(settings, db, vault, registry) if settings.serve_worker else (None, None)
    )
    events = EventService(
        db,
        catalog=settings.channels,
        vault=vault,
        history_days=settings.history_days,
        encryption_mode=settings.encryption,
        on_new_work=worker.wake if worker is not None else lambda: None,
    )
    internal_tls = settings.internal_tls()

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        try:
            await prepare_database(db, vault, migrate=settings.migrate_on_start)
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
        worker_task = None if worker is None else asyncio.create_task(worker.run())
        # What exists now (modules, the app, its routes and models) lives as long as the
        # process: keep it out of the garbage collector's full passes, which otherwise walk
        # all of it every few thousand requests and show up as tens of milliseconds at p99.
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            if worker is not None and worker_task is not None:
                worker.stop()
                await worker_task
            if gateway_client is not None:
                await gateway_client.aclose()
            await db.close()

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
    app.state.database = db
    app.state.client_api = ClientApi(
        pushers=PusherService(
            db,
            url_policy=GatewayUrlPolicy(
                settings.gateway_allowlist, allow_http=settings.gateway_allow_http
            ),
            encryption_mode=settings.encryption,
            max_pushers_per_user=settings.max_pushers_per_user,
            vault=vault,
        ),
        channels=ChannelService(db, settings.channels),
        authenticator=authenticator,
        limiter=UserRateLimiter(settings.rate_limit),
        encryption_required=settings.encryption == "required",
        history=HistoryService(db, vault, enabled=settings.history_days > 0),
        pseudonym=vault.pseudonym,
        pushkey_index=vault.pushkey_index,
    )
    app.state.worker = worker
    _set_internal_state(app, settings, events, UserRequests(db, vault), vault.pseudonym)
    app.state.rs_app = create_rs_app(
        RsService(
            db,
            events,
            catalog=settings.channels,
            idempotency_hours=settings.rs_idempotency_hours,
            max_pending=settings.rs_max_pending,
            pseudonym=vault.pseudonym,
        ),
        RsAccess(
            clients=settings.rs_clients,
            tls=internal_tls,
            api_key=app.state.internal_api_key,
        ),
        UserRateLimiter(settings.rs_rate_limit),
        api_docs=settings.api_docs,
    )
    install_error_handlers(app)
    routers = [client_router(settings.base_path)]
    if settings.internal_port is None:
        routers += [internal_router(), admin_router()]
    for router in routers:
        app.include_router(router)
    if settings.internal_port is None:
        app.mount(RS_BASE_PATH, app.state.rs_app)
    readiness = Readiness(
        db,
        worker,
        max_pending_age_seconds=settings.ready_max_pending_age_seconds,
        max_worker_silence_seconds=settings.ready_max_worker_silence_seconds,
    )
    _add_operations_routes(app, readiness, metrics_dir)
    if settings.api_docs:
        add_docs(app)
    _document_request_bodies(app)
    app.state.metrics_registry = registry
    app.state.http_metrics = HttpMetrics(registry)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(RawPathGuard, prefixes=parameter_prefixes(*routers))
    app.add_middleware(
        ObserveMiddleware, metrics=app.state.http_metrics, access_log_enabled=access_log
    )
    app.add_middleware(RequestIdMiddleware)  # outermost: the access line carries the id too
    return app


def _set_internal_state(
    app: FastAPI,
    settings: Settings,
    events: EventService,
    users: UserRequests,
    pseudonym: Callable[[str], str],
) -> None:
    app.state.events = events
    app.state.users = users
    app.state.pseudonym = pseudonym
    app.state.internal_api_key = (
        None if settings.internal_api_key is None else settings.internal_api_key.get_secret_value()
    )
    app.state.max_events_per_batch = settings.max_events_per_batch


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
    _set_internal_state(app, settings, main.state.events, main.state.users, main.state.pseudonym)
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


def _add_operations_routes(app: FastAPI, readiness: Readiness, metrics_dir: Path | None) -> None:
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
    async def metrics(request: Request) -> Response:
        if metrics_dir is None:
            body = generate_latest(request.app.state.metrics_registry)
        else:  # every process's files, merged (process_* metrics exist per process only)
            registry = CollectorRegistry()
            MultiProcessCollector(registry, path=str(metrics_dir))  # type: ignore[no-untyped-call]
            body = generate_latest(registry)
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
