"""Health monitoring: `GET /health` on every address of every backend, the only writer of health.

vLLM answers `/health` with 200 once its engine is ready and 503 when the engine died; a
connection refused means it is still loading or gone. A backend is up when any address is. An
on-demand backend that is not awake is not probed (a parked process answers nothing; a probe
failing then would trip its breaker for its next wake): it counts as up unless its wake failed.
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx

from ..settings import Settings
from .backend import Backend, Upstream
from .discovery import ModelDiscovery
from .registry import Registry
from .state import AWAKE, FAILED, READY

log = logging.getLogger("vllm_gateway.health")


class HealthMonitor:
    def __init__(self, registry: Registry, discovery: ModelDiscovery, settings: Settings) -> None:
        self.registry = registry
        self.discovery = discovery
        self.settings = settings

    async def check(self, backend: Backend, timeout: float = 2.0) -> bool:
        """Probe every address; True when the backend is up. A launched backend that its
        supervisor has not declared ready (starting, restarting, failed, stopped) is not up,
        whatever its port answers, and is not probed: its state is the supervisor's."""
        residency = backend.residency
        if residency is not None and residency.state != AWAKE and not backend.given_up:
            return residency.state != FAILED
        lifecycle = backend.lifecycle
        if lifecycle is not None and lifecycle.state != READY:
            return False
        epoch = backend.epoch  # the process this probe is about, even if it is replaced meanwhile
        results = await asyncio.gather(*(self._probe(u, timeout) for u in backend.upstreams))
        errors = [r for r in results if r is not None]
        if len(errors) < len(results):
            became_ready = backend.health.passed(epoch)
            backend.breaker.record_success()
            if became_ready:
                await self.discovery.refresh(backend)
            return backend.state == READY  # not if the supervisor took it over during the probe
        backend.health.failed(epoch, errors[0])
        backend.breaker.trip()
        return False

    async def _probe(self, upstream: Upstream, timeout: float) -> str | None:
        error = await health_error(upstream, timeout)
        upstream.healthy = error is None
        return error

    async def check_all(self) -> dict[str, bool]:
        backends = list(self.registry.backends.values())
        results = await asyncio.gather(*(self.check(b) for b in backends))
        return {b.name: ok for b, ok in zip(backends, results, strict=False)}

    async def run(self) -> None:
        """The one long-lived loop that keeps health states and model lists fresh."""
        interval = self.settings.health_check_interval
        refresh_every = self.settings.model_refresh_interval
        last_refresh = time.monotonic()
        while True:
            try:
                await self.check_all()
                if time.monotonic() - last_refresh >= refresh_every:
                    last_refresh = time.monotonic()
                    await self.discovery.refresh_all()
            except Exception:  # a bug here must not stop monitoring
                log.exception("backend monitor iteration failed")
            await asyncio.sleep(interval)


async def health_error(upstream: Upstream, timeout: float) -> str | None:
    """None when the address answers GET /health with 200 (vLLM's "ready"), else why not."""
    try:
        response = await upstream.client.get("/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return f"health check failed: {type(exc).__name__}"
    return None if response.status_code == 200 else f"health check answered {response.status_code}"


__all__ = ["HealthMonitor", "health_error"]
