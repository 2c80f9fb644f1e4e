"""The app factory: `create_app(settings)` builds every part and wires it on `app.state`.

Nothing lives at module level, so a test builds a fresh gateway in one line and two gateways can
share a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator

import httpx
from fastapi import FastAPI

from app import __version__
from app.api import add_error_handlers, add_routes
from app.metrics import GatewayMetrics
from app.metrics.page import MetricsPage
from app.proxy import Proxy
from app.registry import Registry
from app.settings import Settings, load_settings

log = logging.getLogger("vllm_gateway")


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build a gateway. `transport` replaces the network for every backend client (tests)."""
    registry = Registry(settings, transport)
    metrics = GatewayMetrics()
    metrics.declare_backends(list(registry.backends))
    proxy = Proxy(registry, metrics, settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.shutting_down = False
        await registry.check_all()
        await registry.refresh_all()
        monitor = asyncio.create_task(registry.monitor(), name="backend-monitor")
        try:
            yield
        finally:
            app.state.shutting_down = True
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor
            await registry.aclose()

    app = FastAPI(
        title="vllm-gateway",
        version=__version__,
        summary="One OpenAI-compatible endpoint for several vLLM servers.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.proxy = proxy
    app.state.metrics_page = MetricsPage(registry, metrics)
    app.state.shutting_down = False
    add_routes(app, proxy)
    add_error_handlers(app)
    if settings.cors.allow_origins:
        from fastapi.middleware.cors import CORSMiddleware

        cors = settings.cors
        app.add_middleware(
            CORSMiddleware,
            allow_origins=cors.allow_origins,
            allow_methods=cors.allow_methods,
            allow_headers=cors.allow_headers,
            allow_credentials=cors.allow_credentials,
        )
    return app


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker serving: settings from GATEWAY_*."""
    return create_app(load_settings())
