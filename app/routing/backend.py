"""A backend: its configuration, its addresses, and the states its owners write.

Who writes what (one writer per state, `routing.state`):
- `health` and each address's `healthy`: the health monitor (`routing.health`);
- `lifecycle`: the supervisor (`supervise.supervisor`), for launched backends only;
- `residency`: the residency manager (`residency.manager`), for `residency: on_demand` backends only;
- `cards`: model discovery (`routing.discovery`);
- `breaker`: events from forwarded requests and probes (`routing.breaker`);
- each address's `outstanding`: the requests that hold it;
- `adapters` and each address's `adapters`: the adapter manager (`adapters.manager`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx

from ..adapters.config import adapter_specs, read_lora_flags
from ..adapters.state import AddressAdapters, BackendAdapters
from ..http.client import LeanTransport
from ..http.sender import HttpxSender, Sender
from ..settings import BackendConfig, Settings, Timeouts
from .breaker import CircuitBreaker
from .limits import ConcurrencyLimit
from .state import AWAKE, FAILED, READY, ROUTABLE_STATES, Health, Lifecycle, Residency


@dataclass(eq=False)
class Upstream:
    """One address of a backend. `client` serves the gateway's own calls (health, model lists,
    metrics); forwarded requests go through `sender`, with headers prepared once, here."""

    url: str
    client: httpx.AsyncClient
    sender: Sender
    healthy: bool = True
    outstanding: int = 0
    default_headers: dict[bytes, bytes] = field(default_factory=dict)
    adapters: AddressAdapters | None = None  # the LoRA adapters it holds, when its backend has `adapters:`


@dataclass(eq=False)
class Backend:
    config: BackendConfig
    upstreams: list[Upstream]
    timeouts: Timeouts
    breaker: CircuitBreaker
    limit: ConcurrencyLimit | None = None
    health: Health = field(default_factory=Health)
    lifecycle: Lifecycle | None = None
    residency: Residency | None = None
    cards: list[dict[str, Any]] = field(default_factory=list)
    models_refreshed_at: float | None = None
    adapters: BackendAdapters | None = None
    turn: int = 0  # counts `pick` calls: addresses tied for least outstanding take turns

    def __post_init__(self) -> None:
        launch = self.config.launch
        if launch is not None and self.lifecycle is None:
            self.lifecycle = Lifecycle()
        if launch is not None and launch.on_demand and self.residency is None:
            self.residency = Residency(launch.swap, launch.sleep_level)

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def launched(self) -> bool:
        return self.lifecycle is not None

    @property
    def epoch(self) -> int:
        """The process the health monitor's records are about (0: not launched)."""
        return self.lifecycle.epoch if self.lifecycle is not None else 0

    @property
    def state(self) -> str:
        """The residency manager's word while an on-demand backend is not awake; else the
        supervisor's while the process is not ready; then the health monitor's."""
        residency = self.residency
        if residency is not None and residency.state != AWAKE and not self.given_up:
            return residency.state
        lifecycle = self.lifecycle
        if lifecycle is not None:
            if lifecycle.state != READY:
                return lifecycle.state
            if self.health.epoch != lifecycle.epoch:
                return READY  # the supervisor saw it answer /health; no probe of it yet
        return self.health.state

    @property
    def routable(self) -> bool:
        return self.state in ROUTABLE_STATES

    @property
    def serviceable(self) -> bool:
        """Ready, or asleep on demand and free to be woken (`gateway_backend_up`)."""
        residency = self.residency
        if residency is not None and residency.state != AWAKE and not self.given_up:
            return residency.state != FAILED
        return self.state == READY

    @property
    def last_error(self) -> str | None:
        lifecycle = self.lifecycle
        if lifecycle is not None and (lifecycle.state != READY or self.health.epoch != lifecycle.epoch):
            return lifecycle.error
        return self.health.error

    @property
    def health_failing_since(self) -> float | None:
        """Since when every probe of the current process has failed (None: it has not)."""
        health = self.health
        return health.failing_since if health.epoch == self.epoch else None

    @property
    def last_health_error(self) -> str | None:
        health = self.health
        return health.probe_error if health.epoch == self.epoch else None

    @property
    def given_up(self) -> bool:
        return self.lifecycle is not None and self.lifecycle.given_up

    @property
    def pid(self) -> int | None:
        return self.lifecycle.pid if self.lifecycle is not None else None

    @property
    def restarts(self) -> int:
        return self.lifecycle.restarts if self.lifecycle is not None else 0

    @property
    def last_exit_code(self) -> int | None:
        return self.lifecycle.last_exit_code if self.lifecycle is not None else None

    def answered(self) -> None:
        """Event: a real response arrived, so the backend is there whatever a past probe said."""
        self.breaker.record_success()
        self.health.answered()

    @property
    def canonical_model(self) -> str | None:
        """The name aliases are rewritten to: first configured model, else first reported."""
        if self.config.served_model_name:
            return self.config.served_model_name
        for card in self.cards:
            if card.get("parent") is None:
                return card.get("id")
        return None

    @property
    def model_names(self) -> list[str]:
        return [c["id"] for c in self.cards] or list(self.config.models)

    def pick(self, prefer: Sequence[Upstream] = ()) -> Upstream:
        """Least outstanding requests among healthy addresses (all of them if none is healthy);
        ties taken in turn, so requests that do not overlap still spread over every address
        (without it, an idle pair of replicas would send everything to the first). `prefer`: the
        same among those of these addresses that are healthy, if any (those holding an adapter)."""
        ups = self.upstreams
        if len(ups) == 1:
            return ups[0]
        if prefer:
            ups = [u for u in prefer if u.healthy] or ups
        healthy = [u for u in ups if u.healthy] or ups
        least = min(u.outstanding for u in healthy)
        tied = [u for u in healthy if u.outstanding == least]
        choice = tied[self.turn % len(tied)]
        self.turn += 1
        return choice

    def status(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "name": self.name,
            "url": self.upstreams[0].url if len(self.upstreams) == 1 else None,
            "urls": [u.url for u in self.upstreams],
            "state": self.state,
            "models": self.model_names,
            "aliases": list(self.config.aliases),
            "last_error": self.last_error,
            "launched": self.launched,
            "circuit": self.breaker.state,
        }
        if self.limit is not None:
            info["limits"] = self.limit.status()
        if self.adapters is not None:
            info["adapters"] = self.adapters.status([u.adapters for u in self.upstreams if u.adapters is not None])
        info["residency"] = self.residency.status() if self.residency is not None else {"mode": "always"}
        lifecycle = self.lifecycle
        if lifecycle is not None:
            uptime = lifecycle.uptime()
            info.update(pid=lifecycle.pid, restarts=lifecycle.restarts,
                        uptime_s=round(uptime, 1) if uptime is not None else None,
                        last_exit_code=lifecycle.last_exit_code)
        return info


def backend_headers(config: BackendConfig) -> dict[bytes, bytes]:
    """Headers every request to this backend carries unless the client's request sets them."""
    headers = {b"accept-encoding": b"identity"}
    if config.api_key is not None:
        headers[b"authorization"] = f"Bearer {config.api_key.get_secret_value()}".encode()
    return headers


def make_upstream(url: str, settings: Settings, config: BackendConfig,
                  transport: httpx.AsyncBaseTransport | None) -> Upstream:
    """An address with its client, and the forwarding seam chosen once: the gateway's own client
    for the plain-http backends it connects to itself, httpx for an injected transport or https."""
    timeouts = config.effective_timeouts(settings.timeouts)
    timeout = httpx.Timeout(
        connect=timeouts.connect,
        read=max(timeouts.response_head, timeouts.stream_idle),
        write=timeouts.response_head,
        pool=timeouts.connect,
    )
    headers = backend_headers(config)
    sender: Sender | None = None
    if transport is None:
        # The backend closes idle connections after its keep-alive: expire ours a second earlier.
        lean = LeanTransport(keepalive_expiry=config.effective_keep_alive - 1)
        sender = lean.sender(url, timeouts.connect)
        transport = lean
    if sender is None:
        sender = HttpxSender(transport, url, {**timeout.as_dict(), "body": timeouts.stream_idle})
    client = httpx.AsyncClient(
        base_url=url,
        headers={k.decode(): v.decode() for k, v in headers.items()},
        transport=transport,
        trust_env=False,  # never send loopback traffic through an HTTP(S)_PROXY from the environment
        timeout=timeout,
    )
    return Upstream(url, client, sender, default_headers=headers)


def make_backend(config: BackendConfig, settings: Settings, transport: httpx.AsyncBaseTransport | None) -> Backend:
    breaker = CircuitBreaker(settings.circuit_breaker.failure_threshold, settings.circuit_breaker.reset_timeout)
    limit = None
    if config.max_concurrency:
        limit = ConcurrencyLimit(config.name, config.max_concurrency, config.max_queue, config.queue_timeout)
    upstreams = [make_upstream(url, settings, config, transport) for url in config.all_urls]
    adapters = None
    if config.adapters:
        adapters = BackendAdapters(adapter_specs(config.adapters), config.adapter_limit)
        pinned = frozenset(read_lora_flags(config.launch.args).lora_modules) if config.launch else frozenset()
        for upstream in upstreams:
            upstream.adapters = AddressAdapters(upstream.url, pinned)
    return Backend(config, upstreams, config.effective_timeouts(settings.timeouts), breaker, limit, adapters=adapters)


__all__ = ["Backend", "Upstream", "backend_headers", "make_backend", "make_upstream"]
