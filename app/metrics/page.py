"""The `/metrics` page: the gateway's own families, then every backend's `vllm:*` families.

Backends are scraped when the page is asked for, all at once, each with
`metrics_scrape_timeout`, through the backend's own pooled httpx clients (no extra clients). A
backend the health checker knows to be down is not asked at all, and one that does not answer in
time is left out, so the page comes back within the timeout whatever the backends do; its
series are then absent, `gateway_backend_up` and `gateway_backend_scrape_errors_total` say why.
The merged backend part is kept for `CACHE_SECONDS` and shared by concurrent requests, so two
Prometheus servers (or a dashboard refreshing) do not multiply the load on the backends.
"""

from __future__ import annotations

import asyncio
import logging
import time
from urllib.parse import urlsplit

import httpx
from prometheus_client import CONTENT_TYPE_PLAIN_0_0_4

from ..routing.backend import Backend, Upstream
from ..routing.registry import Registry
from ..routing.state import ASLEEP, READY, UNKNOWN
from .gateway import GatewayMetrics
from .merge import PageMerger, label_text

log = logging.getLogger("vllm_gateway.metrics")

# Shorter than any sensible scrape interval: it only spares the backends bursts of page requests.
CACHE_SECONDS = 0.5
# Classic text format: what every Prometheus (2.x and 3.x) and vLLM version reads and writes.
CONTENT_TYPE = CONTENT_TYPE_PLAIN_0_0_4
# Unhealthy, starting, restarting, failed or stopped backends are not asked: it would only cost
# the timeout.
_SCRAPED_STATES = frozenset({UNKNOWN, READY})
_ACCEPT = {"accept": "text/plain;version=0.0.4;q=1.0, */*;q=0.1"}


class MetricsPage:
    def __init__(self, registry: Registry, metrics: GatewayMetrics, scrape_timeout: float = 2.0,
                 cache_seconds: float = CACHE_SECONDS) -> None:
        self.registry = registry
        self.metrics = metrics
        self.scrape_timeout = scrape_timeout
        self.cache_seconds = cache_seconds
        self._cached: bytes = b""
        self._fresh_until = 0.0
        self._pending: asyncio.Task[bytes] | None = None

    async def render(self) -> tuple[bytes, str]:
        backends = await self.backend_part()
        for backend in self.registry.backends.values():
            self.metrics.backend_up.labels(backend.name).set(1 if backend.serviceable else 0)
        return self.metrics.exposition() + backends, CONTENT_TYPE

    async def backend_part(self) -> bytes:
        """The merged backend families, from the cache or one shared scrape."""
        if time.monotonic() < self._fresh_until:
            return self._cached
        if self._pending is None:
            self._pending = asyncio.get_running_loop().create_task(self._scrape_all(), name="metrics-scrape")
            self._pending.add_done_callback(self._settle)
        # Shielded: a Prometheus giving up on one request does not cancel the scrape others await.
        return await asyncio.shield(self._pending)

    def _settle(self, task: asyncio.Task[bytes]) -> None:
        self._pending = None
        if not task.cancelled() and task.exception() is None:
            self._cached = task.result()
            self._fresh_until = time.monotonic() + self.cache_seconds

    async def _scrape_all(self) -> bytes:
        jobs: list[tuple[Backend, Upstream, str]] = []
        for backend in self.registry.backends.values():
            if backend.state not in _SCRAPED_STATES and not _asleep_in_process(backend):
                continue
            several = len(backend.upstreams) > 1
            for upstream in backend.upstreams:
                if several and not upstream.healthy:
                    continue
                jobs.append((backend, upstream, label_text(backend.name, _replica(upstream.url) if several else None)))
        texts = await asyncio.gather(*(self._scrape(backend, upstream) for backend, upstream, _ in jobs))
        merger = PageMerger()
        for (backend, _, labels), text in zip(jobs, texts, strict=False):
            if text is None:
                continue
            try:
                merger.add(text, labels)
            except Exception:  # a malformed page must not take the whole page down
                log.exception("could not merge the metrics page of backend %r", backend.name)
                self.metrics.scrape_error(backend.name)
        return merger.text().encode()

    async def _scrape(self, backend: Backend, upstream: Upstream) -> str | None:
        timeout = self.scrape_timeout
        try:
            async with asyncio.timeout(timeout):
                response = await upstream.client.get("/metrics", headers=_ACCEPT, timeout=timeout)
            if response.status_code != 200:
                raise ValueError(f"answered {response.status_code}")
            return response.content.decode("utf-8", "replace")
        except (httpx.HTTPError, TimeoutError, ValueError) as exc:
            log.debug("scraping %s/metrics of backend %r failed: %r", upstream.url, backend.name, exc)
            self.metrics.scrape_error(backend.name)
            return None


def _asleep_in_process(backend: Backend) -> bool:
    """A sleep-mode backend asleep in its running process still answers /metrics (its
    `vllm:engine_sleep_state` says so); a parked one has no process to ask."""
    residency, lifecycle = backend.residency, backend.lifecycle
    return (residency is not None and residency.state == ASLEEP and not residency.cold
            and lifecycle is not None and lifecycle.state == READY)


def _replica(url: str) -> str:
    """`host:port` of one address of a backend with several: short, stable, low-cardinality."""
    parts = urlsplit(url)
    host = parts.hostname or url
    if ":" in host:
        host = f"[{host}]"
    port = parts.port or (443 if parts.scheme == "https" else 80)
    suffix = parts.path if parts.path not in ("", "/") else ""
    return f"{host}:{port}{suffix}"


__all__ = ["CACHE_SECONDS", "CONTENT_TYPE", "MetricsPage"]
