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
from typing import Any

import httpx
from fastapi import FastAPI

from . import __version__
from .api.admin import add_admin_routes
from .api.app import GatewayApp, add_error_handlers
from .api.auth import ApiKeyMiddleware
from .api.model_routes import add_model_routes
from .api.routes import add_routes
from .forwarding.context import ForwardingContext
from .forwarding.failures import KINDS
from .forwarding.forwarder import Forwarder
from .forwarding.realtime import RealtimeEndpoint
from .metrics import GatewayMetrics
from .metrics.page import MetricsPage
from .residency.manager import build_residency
from .routing.discovery import ModelDiscovery
from .routing.health import HealthMonitor
from .routing.registry import Registry
from .settings import Settings, load_settings
from .supervise.supervisor import Supervisor
from .supervise.turn import LoadingTurn

log = logging.getLogger("vllm_gateway")


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None) -> FastAPI:
    """Build a gateway. `transport` replaces the network for every backend client (tests)."""
    registry = Registry(settings, transport)
    metrics = GatewayMetrics()
    metrics.declare_backends(list(registry.backends), KINDS)
    ctx = ForwardingContext(settings, metrics)
    forwarder = Forwarder(registry, ctx)
    discovery = ModelDiscovery(registry)
    health = HealthMonitor(registry, discovery, settings)
    turn = LoadingTurn()  # one load, sleep or wake at a time: the supervisor's and the residency manager's
    residency = ctx.residency = build_residency(settings, registry, metrics, turn)
    supervisor = Supervisor(registry, discovery, metrics, loading=turn, residence=residency) if registry.launched else None
    if residency is not None and supervisor is not None:
        residency.attach(supervisor.units)
        metrics.declare_on_demand(sorted(residency.slots))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.shutting_down = False
        _on_exit_signal(app.state.begin_shutdown)
        monitor = None
        try:
            # Launched backends start in the background: /health answers while they load.
            if supervisor is not None:
                supervisor.start()
            if residency is not None:
                residency.start()
            await health.check_all()  # a backend found ready has its models listed right then
            monitor = asyncio.create_task(health.run(), name="backend-monitor")
            yield
        finally:
            app.state.shutting_down = True
            if monitor is not None:
                monitor.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await monitor
            if residency is not None:
                await residency.stop()
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
    state = app.state
    state.settings = settings
    state.registry = registry
    state.metrics = metrics
    state.forwarding = ctx
    state.forwarder = forwarder
    state.health = health
    state.discovery = discovery
    state.supervisor = supervisor
    state.residency = residency
    state.metrics_page = MetricsPage(registry, metrics, settings.metrics_scrape_timeout)
    state.shutting_down = False

    def begin_shutdown() -> None:
        """/ready turns 503 and new requests are refused; in-flight ones get the grace period."""
        state.shutting_down = True
        ctx.begin_shutdown()

    state.begin_shutdown = begin_shutdown
    model_endpoints = add_model_routes(app, forwarder, RealtimeEndpoint(registry, ctx))
    add_routes(app)
    add_admin_routes(app)
    add_error_handlers(app)
    _protect(app, settings, model_endpoints)
    return app


def _protect(app: GatewayApp, settings: Settings, model_endpoints: dict[str, Any]) -> None:
    """CORS and API keys as middleware; the model routes skip the stack unless CORS must see them."""
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
        app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_key=metrics_key)
    if settings.cors.allow_origins:  # CORS must see every request: then no shortcut
        return
    if keys:
        app.fast_routes = {p: ApiKeyMiddleware(e, keys=keys, metrics_key=None) for p, e in model_endpoints.items()}
    else:
        app.fast_routes = dict(model_endpoints)


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
    from .http.serving import tune_gc

    app = create_app(load_settings())
    tune_gc()  # this process serves until it exits
    return app
