"""The `/metrics` page: the gateway's own families (backend pages are merged in by `merge`)."""

from __future__ import annotations

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.metrics.gateway import GatewayMetrics
from app.registry import READY, Registry


class MetricsPage:
    def __init__(self, registry: Registry, metrics: GatewayMetrics) -> None:
        self.registry = registry
        self.metrics = metrics

    async def render(self) -> tuple[bytes, str]:
        for backend in self.registry.backends.values():
            self.metrics.backend_up.labels(backend.name).set(1 if backend.state == READY else 0)
        return generate_latest(self.metrics.registry), CONTENT_TYPE_LATEST
