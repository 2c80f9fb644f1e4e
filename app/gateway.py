"""The app factory: `create_app(settings)` builds every part and wires it on `app.state`.

Nothing lives at module level, so a test builds a fresh gateway in one line and two gateways can
share a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import threading
from collections.abc import AsyncIterator, Callable

import httpx
from fastapi import FastAPI

from . import __version__
from .api import GatewayApp, add_error_handlers, add_routes
from .metrics import GatewayMetrics
from .metrics.page import MetricsPage
from .proxy import Proxy
from .registry import Registry
from .settings import Settings, load_settings
from .supervisor import Supervisor, launched_any

log = logging.getLogger("vllm_gateway")


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build a gateway. `transport` replaces the network for every backend client (tests)."""
    registry = Registry(settings, transport)
    metrics = GatewayMetrics()
    metrics.declare_backends(list(registry.backends))
    proxy = Proxy(registry, metrics, settings)
    supervisor = Supervisor(registry, metrics) if launched_any(registry) else None

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.shutting_down = False
        _on_exit_signal(app.state.begin_shutdown)
        monitor = None
        try:
            # Launched backends start in the background: /health answers while they load.
            if supervisor is not None:
                supervisor.start()
            await registry.check_all()  # a backend found ready has its models listed right then
            monitor = asyncio.create_task(registry.monitor(), name="backend-monitor")
            yield
        finally:
            app.state.shutting_down = True
            if monitor is not None:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
            if supervisor is not None:  # also when start-up failed: no process may outlive us
                await supervisor.stop()
            await registry.aclose()
            metrics.release()

    app = GatewayApp(
        title="vllm-gateway",
        version=__version__,
        summary="One OpenAI-compatible endpoint for several vLLM servers.",
        lifespan=lifespan,
        redoc_url=None,
        redirect_slashes=False,  # a redirect would point at whatever Host the client sent
    )
    app.state.settings = settings
    app.state.registry = registry
    app.state.metrics = metrics
    app.state.proxy = proxy
    app.state.supervisor = supervisor
    app.state.metrics_page = MetricsPage(registry, metrics, settings.metrics_scrape_timeout)
    app.state.shutting_down = False

    def begin_shutdown() -> None:
        """/ready turns 503 and new requests are refused; in-flight ones get the grace period."""
        app.state.shutting_down = True
        proxy.begin_shutdown()

    app.state.begin_shutdown = begin_shutdown
    model_endpoints = add_routes(app, proxy)
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
    keys = [key.get_secret_value() for key in settings.api_keys]
    metrics_key = settings.metrics_api_key.get_secret_value() if settings.metrics_api_key else None
    if keys or metrics_key:
        from .auth import ApiKeyMiddleware

        app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_key=metrics_key)
    if not settings.cors.allow_origins:  # CORS must see every request: then no shortcut
        if keys:
            from .auth import ApiKeyMiddleware

            app.fast_routes = {p: ApiKeyMiddleware(e, keys=keys, metrics_key=None) for p, e in model_endpoints.items()}
        else:
            app.fast_routes = dict(model_endpoints)
    return app


def _on_exit_signal(callback: Callable[[], None]) -> None:
    """Run `callback` first when SIGTERM/SIGINT arrives, then the server's own handler.

    uvicorn only tells the app about shutdown after connections drained; a load balancer must
    see /ready fail as soon as the signal arrives.
    """
    if threading.current_thread() is not threading.main_thread():
        return
    for sig in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(sig)

        def handler(signum: int, frame: object, previous: object = previous) -> None:
            callback()
            if callable(previous):
                previous(signum, frame)

        signal.signal(sig, handler)


def app_from_environment() -> FastAPI:
    """Factory for `uvicorn --factory` and multi-worker serving: settings from GATEWAY_*."""
    from .serving import tune_gc

    app = create_app(load_settings())
    tune_gc()  # this process serves until it exits
    return app
