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
from .api.operator import Access
from .api.routes import add_routes
from .forwarding.context import ForwardingContext
from .forwarding.failures import KINDS
from .forwarding.forwarder import Forwarder
from .forwarding.realtime import RealtimeEndpoint
from .gpu.devices import Gpus
from .gpu.nvml import open_nvml
from .gpu.telemetry import GpuTelemetry, register_gpu_metrics
from .metrics import GatewayMetrics
from .metrics.page import MetricsPage
from .planner.plan import Plan
from .planner.startup import plan_gateway
from .residency.budget import plan_figures
from .residency.manager import build_residency
from .residency.memory import telemetry_probe
from .routing.discovery import ModelDiscovery
from .routing.health import HealthMonitor
from .routing.registry import Registry
from .settings import Settings, load_settings
from .supervise.supervisor import Supervisor
from .supervise.turn import LoadingTurn
from .ui.page import OperatorPage
from .ui.routes import add_ui_routes

log = logging.getLogger("vllm_gateway")


def create_app(settings: Settings, *, transport: httpx.AsyncBaseTransport | None = None, plan: Plan | None = None,
               gpus: Gpus | None = None) -> FastAPI:
    """Build a gateway. `transport` replaces the network for every backend client (tests); `plan`
    is the memory plan of the launched backends (made here from their files when not given: this
    reads files, so it runs before the event loop); `gpus` replaces NVML (tests; found when None)."""
    registry = Registry(settings, transport)
    metrics = GatewayMetrics()
    metrics.declare_backends(list(registry.backends), KINDS)
    for backend in registry.backends.values():
        if backend.adapters is not None:
            metrics.declare_adapters(backend.name, list(backend.adapters.specs),
                                     sum(len(u.adapters.pinned) for u in backend.upstreams if u.adapters is not None))
    ctx = ForwardingContext(settings, metrics)
    page = OperatorPage(settings) if settings.ui.enabled else None
    if page is not None:
        ctx.activity = page.activity
    forwarder = Forwarder(registry, ctx)
    discovery = ModelDiscovery(registry)
    health = HealthMonitor(registry, discovery, settings)
    if plan is None and registry.launched:
        plan = plan_gateway(settings)
    gpus = gpus if gpus is not None else open_nvml()
    supervisor: Supervisor | None = None
    telemetry = GpuTelemetry(gpus, pgids=lambda: supervisor.pgids if supervisor is not None else {}) \
        if gpus is not None else None
    if telemetry is not None:
        register_gpu_metrics(metrics.registry, telemetry)
    turn = LoadingTurn()  # one load, sleep or wake at a time: the supervisor's and the residency manager's
    shares, weights = plan_figures(plan) if plan is not None else ({}, {})
    residency = ctx.residency = build_residency(
        settings, registry, metrics, turn, planned_shares=shares, weights_bytes=weights,
        memory_probe=telemetry_probe(telemetry) if telemetry is not None else None)
    if registry.launched:
        supervisor = Supervisor(registry, discovery, metrics, plan=plan, telemetry=telemetry, loading=turn,
                                residence=residency, output_tap=page.logs.backend_output if page is not None else None)
    if residency is not None and supervisor is not None:
        residency.attach(supervisor.units)
        metrics.declare_on_demand(sorted(residency.slots))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        app.state.shutting_down = False
        _on_exit_signal(app.state.begin_shutdown)
        monitor = watcher = None
        try:
            # Launched backends start in the background: /health answers while they load.
            if supervisor is not None:
                supervisor.start()
            if residency is not None:
                residency.start()
            await health.check_all()  # a backend found ready has its models listed right then
            monitor = asyncio.create_task(health.run(), name="backend-monitor")
            if telemetry is not None and telemetry.available:
                watcher = asyncio.create_task(_watch_gpus(telemetry, settings.health_check_interval), name="gpu-telemetry")
            if page is not None:
                page.start()
            yield
        finally:
            app.state.shutting_down = True
            if page is not None:
                await page.stop()
            for task in (monitor, watcher):
                if task is not None:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
            if residency is not None:
                await residency.stop()
            if supervisor is not None:  # also when start-up failed: no process may outlive us
                await supervisor.stop()
            await ctx.adapters.aclose()
            await registry.aclose()
            if gpus is not None:
                gpus.close()
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
    state.plan = plan
    state.gpu_telemetry = telemetry
    state.residency = residency
    state.metrics_page = MetricsPage(registry, metrics, settings.metrics_scrape_timeout)
    state.shutting_down = False
    state.access = Access(settings)
    state.activity = page.activity if page is not None else None
    state.engine_stats = page.engine if page is not None else None
    state.live_feed = page.bind(state) if page is not None else None

    def begin_shutdown() -> None:
        """/ready turns 503 and new requests are refused; in-flight ones get the grace period."""
        state.shutting_down = True
        ctx.begin_shutdown()
        if state.live_feed is not None:
            state.live_feed.close()  # open pages must not hold the server's graceful exit

    state.begin_shutdown = begin_shutdown
    model_endpoints = add_model_routes(app, forwarder, RealtimeEndpoint(registry, ctx))
    add_routes(app)
    add_admin_routes(app)
    if page is not None:
        add_ui_routes(app, state.access, state.live_feed, forwarder)
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
    operator_keys = tuple(k.get_secret_value() for k in (settings.admin_api_key, settings.metrics_api_key) if k)
    if keys or metrics_key:
        app.add_middleware(ApiKeyMiddleware, keys=keys, metrics_key=metrics_key, operator_keys=operator_keys)
    if settings.cors.allow_origins:  # CORS must see every request: then no shortcut
        return
    if keys:
        app.fast_routes = {p: ApiKeyMiddleware(e, keys=keys, metrics_key=None) for p, e in model_endpoints.items()}
    else:
        app.fast_routes = dict(model_endpoints)


async def _watch_gpus(telemetry: GpuTelemetry, interval: float) -> None:
    """NVML every `interval` seconds, off the event loop: its calls block (a few ms for 8 GPUs)."""
    while True:
        try:
            await asyncio.to_thread(telemetry.snapshot)
        except Exception:  # a bug here must not stop the readings, nor the gateway
            log.exception("reading the GPUs through NVML failed")
        await asyncio.sleep(interval)


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
