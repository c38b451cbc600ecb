"""The composition root: `create_app(settings)` wires the services into the API's routes.

The lifespan opens the services bundle (database pool, keyring, HTTP session, thread pool,
provider registry) and closes it in reverse order; handlers reach it only through dependencies,
never through module globals. It also beats the notification receiver's heartbeat, so the worker
notices when the receiver was down. Background work (sync, health checks) runs in `calbroker worker`.
"""

from __future__ import annotations

import importlib.util
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, AsyncExitStack, asynccontextmanager
from importlib import metadata
from pathlib import Path

import msgspec
from litestar import Litestar, Router, get
from litestar.datastructures import CacheControlHeader, State
from litestar.di import Provide
from litestar.openapi import OpenAPIConfig
from litestar.openapi.plugins import SwaggerRenderPlugin
from litestar.openapi.spec import Server
from litestar.plugins.jinja import JinjaTemplateEngine
from litestar.static_files import create_static_files_router
from litestar.template import TemplateConfig
from prometheus_client import CollectorRegistry

from calbroker.api.auth import provide_caller, require_api_key
from calbroker.api.availability import availability
from calbroker.api.channels import (
    create_channel,
    enable_channel,
    get_channel_by_id,
    list_application_channels,
    list_deliveries,
    remove_channel,
    replay_channel,
    retry_delivery,
    rotate_channel_secret,
)
from calbroker.api.compat.cronofy import cronofy_router
from calbroker.api.connect import connect_callback, connect_page, connect_submit, service_unavailable
from calbroker.api.connections import (
    connection_rooms,
    create_connect_link,
    get_connection_by_id,
    list_application_connections,
    revoke_connection,
    verify_connection,
)
from calbroker.api.contract import refine
from calbroker.api.dependencies import provide_services
from calbroker.api.events import delete_event, get_event, list_events, put_event
from calbroker.api.free_busy import free_busy
from calbroker.api.health import healthz, metrics, readyz
from calbroker.api.hooks import graph_notifications, receiver_heartbeat
from calbroker.api.me import me
from calbroker.api.methods import allowed_methods
from calbroker.api.problem_pages import problem_index, problem_page, register_template_filters
from calbroker.api.problems import problem_plugin
from calbroker.api.sync import get_sync, put_sync
from calbroker.api.telemetry import HttpMetrics, RequestTelemetry
from calbroker.api.wire import decode_body
from calbroker.config import Settings
from calbroker.services import Services, open_services
from calbroker.store.database import DATABASE_UNAVAILABLE

__all__ = ["create_app", "openapi_document"]


DOCS_ASSETS = "/docs-assets"
"""Where Swagger UI's own files are served (no CDN: the docs page must render without Internet)."""


def _swagger_ui_assets() -> Path:
    """The Swagger UI 5 distribution inside the swagger-ui-py wheel (OpenAPI 3.1 needs Swagger UI 5)."""
    spec = importlib.util.find_spec("swagger_ui")
    if spec is None or spec.origin is None:
        raise RuntimeError("swagger-ui-py is not installed: /docs needs its Swagger UI files")
    return Path(spec.origin).parent / "static"


def _version() -> str:
    try:
        return metadata.version("calbroker")
    except metadata.PackageNotFoundError:
        return "0.0.0"


def _lifespan(settings: Settings, opened: Services | None) -> Callable[[Litestar], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: Litestar) -> AsyncIterator[None]:
        async with AsyncExitStack() as stack:
            # Services opened by the caller (`calbroker serve`) are borrowed, never closed here.
            services = opened if opened is not None else await stack.enter_async_context(open_services(settings))
            app.state.services = services
            try:
                async with receiver_heartbeat(services):
                    yield
            finally:
                app.state.pop("services", None)

    return lifespan


@get("/openapi.json", include_in_schema=False, media_type="application/vnd.oai.openapi+json")
async def openapi_json(state: State) -> dict[str, object]:
    document: dict[str, object] = state["openapi_document"]
    return document


def create_app(settings: Settings, services: Services | None = None) -> Litestar:
    """Build the ASGI app; nothing touches the network until the lifespan starts.

    Without `services` the lifespan opens (and closes) them; a server that must fail before it
    listens opens them first and passes them in.
    """
    v1 = Router(
        path="/v1",
        route_handlers=[
            allowed_methods,  # first: it must own OPTIONS on the paths it serves
            me,
            free_busy,
            availability,
            create_connect_link,
            list_application_connections,
            get_connection_by_id,
            revoke_connection,
            verify_connection,
            connection_rooms,
            get_sync,
            put_sync,
            put_event,
            get_event,
            delete_event,
            list_events,
            create_channel,
            list_application_channels,
            get_channel_by_id,
            remove_channel,
            rotate_channel_secret,
            enable_channel,
            list_deliveries,
            retry_delivery,
            replay_channel,
        ],
        guards=[require_api_key],
        before_request=decode_body,
        dependencies={"caller": Provide(provide_caller, sync_to_thread=False)},
        security=[{"apiKey": []}],
    )
    # The authorize-link pages: no API key (the link token, then a CSRF-bound session, is the credential).
    connect = Router(
        path="/connect",
        route_handlers=[connect_callback, connect_submit, connect_page],
        # An admin's browser gets a page, not a problem document, while the database is away.
        exception_handlers=dict.fromkeys(DATABASE_UNAVAILABLE, service_unavailable),
    )
    # Cronofy's API for its SDKs: its own credentials and error shapes, the same services underneath.
    cronofy = cronofy_router()
    docs_assets = create_static_files_router(
        path=DOCS_ASSETS,
        directories=[_swagger_ui_assets()],
        cache_control=CacheControlHeader(max_age=86400, public=True),
    )
    templates = Path(__file__).parent / "api" / "templates"
    app = Litestar(
        route_handlers=[
            healthz,
            readyz,
            metrics,
            problem_index,
            problem_page,
            openapi_json,
            graph_notifications,
            v1,
            connect,
            cronofy,
            docs_assets,
        ],
        dependencies={"services": Provide(provide_services, sync_to_thread=False)},
        lifespan=[_lifespan(settings, services)],
        plugins=[problem_plugin()],
        openapi_config=_openapi_config(settings),
        template_config=TemplateConfig(
            directory=templates, engine=JinjaTemplateEngine, engine_callback=register_template_filters
        ),
        request_max_body_size=settings.max_body_bytes,
        logging_config=None,
        debug=False,
    )
    http_metrics = HttpMetrics(CollectorRegistry(auto_describe=True))
    app.state.http_metrics = http_metrics
    refine(app.openapi_schema)  # Litestar builds the document once; /docs and /openapi.json share it
    app.state.openapi_document = openapi_document(app)
    # Wrap the whole handler (exception middleware included) so 404/405/500 are measured too.
    app.asgi_handler = RequestTelemetry(app.asgi_handler, http_metrics)
    return app


def _openapi_config(settings: Settings) -> OpenAPIConfig:
    from litestar.openapi.spec import Components, SecurityScheme  # noqa: PLC0415

    return OpenAPIConfig(
        title="calbroker",
        version=_version(),
        description=(
            "One REST API for free/busy, availability and events across Microsoft 365 (Graph) and "
            "on-premises Exchange (EWS) mailboxes. Errors are RFC 9457 problem documents whose `type` "
            "is a page under /problems."
        ),
        servers=[Server(url=settings.public_url)],
        path="/docs",
        render_plugins=[
            # Swagger UI's scripts and styles from the swagger-ui-py wheel, served here: /docs works offline.
            SwaggerRenderPlugin(
                path="/",
                js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                standalone_preset_js_url=f"{DOCS_ASSETS}/swagger-ui-standalone-preset.js",
                favicon=f"<link rel='icon' type='image/png' href='{DOCS_ASSETS}/favicon-32x32.png'>",
            )
        ],
        components=Components(
            security_schemes={
                "apiKey": SecurityScheme(
                    type="http",
                    scheme="bearer",
                    description="A key from `calbroker apps create`, sent as `Bearer cbk_...`.",
                )
            }
        ),
        use_handler_docstrings=True,
    )


def openapi_document(app: Litestar) -> dict[str, object]:
    """The OpenAPI document as served and as committed under openapi/ (servers omitted)."""
    document: dict[str, object] = msgspec.to_builtins(app.openapi_schema.to_schema())
    return document
