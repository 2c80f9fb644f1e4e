"""Model discovery: each backend's own `/v1/models`, the only writer of `Backend.cards`.

Read when a backend becomes ready and every `model_refresh_interval`; the registry's model table
is rebuilt from the cards (LoRA adapters loaded at run time appear this way).
"""

from __future__ import annotations

import asyncio
import logging
import time

import httpx
import orjson

from .backend import Backend
from .registry import Registry

log = logging.getLogger("vllm_gateway.discovery")


class ModelDiscovery:
    def __init__(self, registry: Registry) -> None:
        self.registry = registry

    async def refresh(self, backend: Backend, timeout: float = 5.0) -> None:
        upstream = backend.pick()
        try:
            response = await upstream.client.get("/v1/models", timeout=timeout)
            response.raise_for_status()
            data = orjson.loads(response.content).get("data")
            if not isinstance(data, list):
                raise ValueError("no 'data' list")
        except (httpx.HTTPError, ValueError, AttributeError) as exc:
            log.warning("could not list models of backend %r: %s", backend.name, exc)
            return
        backend.cards = [c for c in data if isinstance(c, dict) and isinstance(c.get("id"), str)]
        backend.models_refreshed_at = time.monotonic()
        self.registry.rebuild()

    async def refresh_all(self) -> None:
        await asyncio.gather(*(self.refresh(b) for b in self.registry.backends.values() if b.routable))


__all__ = ["ModelDiscovery"]
