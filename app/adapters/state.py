"""Which adapters each backend address holds: the records the adapter manager alone writes.

`AddressAdapters` is one address (`Upstream.adapters`): what is loaded there in least recently
used order, what vLLM loaded itself at start (pinned), what is being loaded or unloaded, and how
many requests use each adapter right now (never unloaded while above zero). `BackendAdapters`
(`Backend.adapters`) is the backend's part: its configured adapters, the limit per address, and
the failed loads it remembers. Routing reads them (`Backend.pick(prefer=...)`, `/status`); only
`adapters.manager` changes them.
"""

from __future__ import annotations

import asyncio
import collections
import time
from dataclasses import dataclass, field
from typing import Any

from ..errors import AdapterLoadFailed, BadGateway, GatewayError
from .config import AdapterSpec


@dataclass(frozen=True, slots=True)
class Failure:
    """A refused load, remembered until `until` (monotonic) so requests do not retry it one by one."""

    reason: str  # vLLM's own words
    status: int  # what the client gets: 404 files not found, 400 refused, 502 backend cannot load at all
    code: str
    until: float
    spec: AdapterSpec
    backend: str

    def error(self, now: float) -> GatewayError:
        wait = max(1, round(self.until - now))
        kind = BadGateway if self.status >= 500 else AdapterLoadFailed
        return kind(
            f"adapter `{self.spec.name}` could not be loaded on backend {self.backend!r}: {self.reason}. Check "
            f"adapters.{self.spec.name} ({self.spec.source!r}) of that backend and its launch flags (--enable-lora, "
            f"--max-lora-rank); the gateway tries loading it again in {wait} s", status=self.status, code=self.code,
            param="model",
            headers={"Retry-After": str(wait)})


@dataclass(slots=True)
class Load:
    """One load in progress on one address; every request for the adapter there waits on it."""

    done: asyncio.Future[object]
    waiters: int = 0  # requests counted in flight the moment it succeeds
    task: asyncio.Task[None] | None = None


class AddressAdapters:
    __slots__ = ("url", "loaded", "pinned", "in_flight", "loading", "unloading", "epoch", "trimming")

    def __init__(self, url: str, pinned: frozenset[str] = frozenset()) -> None:
        self.url = url
        self.loaded: collections.OrderedDict[str, float] = collections.OrderedDict()  # name -> loaded at (wall)
        self.pinned = pinned  # `--lora-modules`: vLLM loads them at every start
        self.in_flight: dict[str, int] = {}
        self.loading: dict[str, Load] = {}
        self.unloading: dict[str, asyncio.Task[None]] = {}
        self.epoch = 0  # the backend process the record is about (`Lifecycle.epoch`)
        self.trimming: asyncio.Task[None] | None = None

    def holds(self, name: str) -> bool:
        return name in self.loaded or name in self.pinned

    def resident(self) -> int:
        """Adapters that count against the limit: loaded and pinned (a load counts once it succeeded)."""
        return len(self.loaded) + len(self.pinned)

    def idle_victim(self) -> str | None:
        """The least recently used loaded adapter with no request in flight."""
        in_flight = self.in_flight
        for name in self.loaded:
            if not in_flight.get(name):
                return name
        return None

    def status(self) -> dict[str, Any]:
        now = time.time()
        return {
            "url": self.url,
            "loaded": [*sorted(self.pinned), *self.loaded],  # pinned, then least to most recently used
            "pinned": sorted(self.pinned),
            "loading": list(self.loading),
            "in_flight": {name: count for name, count in self.in_flight.items() if count},
            "loaded_for_s": {name: round(now - at, 1) for name, at in self.loaded.items()},
        }


@dataclass(eq=False)
class BackendAdapters:
    specs: dict[str, AdapterSpec]
    limit: int
    failures: dict[str, Failure] = field(default_factory=dict)

    def failure(self, name: str, now: float) -> Failure | None:
        failure = self.failures.get(name)
        if failure is not None and failure.until <= now:
            del self.failures[name]
            return None
        return failure

    def status(self, addresses: list[AddressAdapters]) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "configured": {name: spec.source for name, spec in self.specs.items()},
            "max_loaded_adapters": self.limit,
            "addresses": [a.status() for a in addresses],
            "failed": {name: {"error": f.reason, "retry_in_s": round(max(0.0, f.until - now), 1)}
                       for name, f in self.failures.items() if f.until > now},
        }


__all__ = ["AddressAdapters", "BackendAdapters", "Failure", "Load"]
