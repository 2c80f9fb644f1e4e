"""Backends and the model table: which backend serves a model name, and under what name.

The table is rebuilt from the configuration and the backends' own `/v1/models` whenever either
changes; resolving a name is a dictionary lookup with no I/O.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import orjson

from .breaker import CircuitBreaker
from .limits import ConcurrencyLimit
from .settings import BackendConfig, Settings, Timeouts
from .transport import LeanTransport

log = logging.getLogger("vllm_gateway.registry")

# States a backend can be in. External backends move between unknown/ready/unhealthy on health
# checks; launched ones also pass through the supervisor's starting/restarting/failed/stopped.
UNKNOWN, STARTING, READY, UNHEALTHY, RESTARTING, FAILED, STOPPED = (
    "unknown", "starting", "ready", "unhealthy", "restarting", "failed", "stopped",
)
SUPERVISED_STATES = frozenset({STARTING, RESTARTING, FAILED, STOPPED})
# Unhealthy backends stay routable through their circuit breaker, which lets a trial through.
ROUTABLE_STATES = frozenset({UNKNOWN, READY, UNHEALTHY})


@dataclass(eq=False)
class Upstream:
    """One address of a backend, with its own pooled connections.

    `client` serves the gateway's own calls (health, model lists, metrics); forwarded requests
    go straight to `transport` with headers and URLs prepared once, here."""

    url: str
    client: httpx.AsyncClient
    healthy: bool = True
    outstanding: int = 0
    default_headers: dict[bytes, bytes] = field(default_factory=dict)
    timeout: dict[str, float | None] = field(default_factory=dict)
    _urls: dict[str, httpx.URL] = field(default_factory=dict)

    @property
    def transport(self) -> httpx.AsyncBaseTransport:
        return self.client._transport

    def url_for(self, path: str) -> httpx.URL:
        url = self._urls.get(path)
        if url is None:
            url = httpx.URL(self.url + path)
            if len(self._urls) < 1024:  # paths with query strings vary: keep the cache bounded
                self._urls[path] = url
        return url


@dataclass(eq=False)
class Backend:
    config: BackendConfig
    upstreams: list[Upstream]
    timeouts: Timeouts
    state: str = UNKNOWN
    last_error: str | None = None
    cards: list[dict[str, Any]] = field(default_factory=list)
    models_refreshed_at: float | None = None
    breaker: CircuitBreaker = field(default_factory=lambda: CircuitBreaker(3, 5.0))
    limit: ConcurrencyLimit | None = None
    # Filled in by the supervisor for launched backends.
    pid: int | None = None
    restarts: int = 0
    started_at: float | None = None
    last_exit_code: int | None = None
    # Set by health checks only (a proxied response does not clear them): since when every
    # GET /health has failed, and how the last one failed. The supervisor restarts on these.
    health_failing_since: float | None = None
    last_health_error: str | None = None
    given_up: bool = False  # launched, failed, and not restarted again (app.supervisor)
    turn: int = 0  # counts `pick` calls: addresses tied for least outstanding take turns

    @property
    def name(self) -> str:
        return self.config.name

    @property
    def launched(self) -> bool:
        return self.config.launch is not None

    @property
    def routable(self) -> bool:
        return self.state in ROUTABLE_STATES

    def answered(self) -> None:
        """A real response arrived: the backend is there, whatever a past health check said."""
        self.breaker.record_success()
        if self.state == UNHEALTHY:
            self.state, self.last_error = READY, None

    @property
    def canonical_model(self) -> str | None:
        """The name aliases are rewritten to: first configured model, else first reported."""
        if self.config.served_model_name:
            return self.config.served_model_name
        for card in self.cards:
            if card.get("parent") is None:
                return card.get("id")
        return None

    def pick(self) -> Upstream:
        """Least outstanding requests among healthy addresses (all of them if none is healthy);
        ties taken in turn, so requests that do not overlap still spread over every address
        (without it, an idle pair of replicas would send everything to the first)."""
        ups = self.upstreams
        if len(ups) == 1:
            return ups[0]
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
            "models": [c["id"] for c in self.cards] or list(self.config.models),
            "aliases": list(self.config.aliases),
            "last_error": self.last_error,
            "launched": self.launched,
            "circuit": self.breaker.state,
        }
        if self.limit is not None:
            info["limits"] = self.limit.status()
        if self.launched:
            info.update(
                pid=self.pid,
                restarts=self.restarts,
                uptime_s=round(time.monotonic() - self.started_at, 1) if self.started_at and self.pid else None,
                last_exit_code=self.last_exit_code,
            )
        return info


@dataclass(frozen=True, slots=True)
class Route:
    backend: Backend
    upstream_model: str | None  # the name to put in the body; None: forward the body unchanged


def backend_headers(config: BackendConfig) -> dict[bytes, bytes]:
    """Headers every request to this backend carries unless the client's request sets them."""
    headers = {b"accept-encoding": b"identity"}
    if config.api_key is not None:
        headers[b"authorization"] = f"Bearer {config.api_key.get_secret_value()}".encode()
    return headers


def make_upstream(url: str, settings: Settings, config: BackendConfig,
                  transport: httpx.AsyncBaseTransport | None) -> Upstream:
    timeouts = config.effective_timeouts(settings.timeouts)
    timeout = httpx.Timeout(
        connect=timeouts.connect,
        read=max(timeouts.response_head, timeouts.stream_idle),
        write=timeouts.response_head,
        pool=timeouts.connect,
    )
    headers = backend_headers(config)
    if transport is None:
        # The backend closes idle connections after its keep-alive: expire ours a second earlier.
        transport = LeanTransport(keepalive_expiry=config.effective_keep_alive - 1)
    client = httpx.AsyncClient(
        base_url=url,
        headers={k.decode(): v.decode() for k, v in headers.items()},
        transport=transport,
        trust_env=False,  # never send loopback traffic through an HTTP(S)_PROXY from the environment
        timeout=timeout,
    )
    return Upstream(url, client, default_headers=headers,
                    timeout={**timeout.as_dict(), "body": timeouts.stream_idle})


class Registry:
    def __init__(self, settings: Settings, transport: httpx.AsyncBaseTransport | None = None) -> None:
        self.settings = settings
        self.backends: dict[str, Backend] = {}
        for config in settings.backends:
            upstreams = [make_upstream(url, settings, config, transport) for url in config.all_urls]
            backend = Backend(config, upstreams, config.effective_timeouts(settings.timeouts))
            backend.breaker = CircuitBreaker(settings.circuit_breaker.failure_threshold, settings.circuit_breaker.reset_timeout)
            if config.max_concurrency:
                backend.limit = ConcurrencyLimit(config.name, config.max_concurrency, config.max_queue, config.queue_timeout)
            self.backends[config.name] = backend
        self._table: dict[str, Route] = {}
        self._cards: list[dict[str, Any]] = []
        self.rebuild()

    # -- the table ---------------------------------------------------------------------------
    def resolve(self, name: str) -> Route | None:
        return self._table.get(name)

    def model_names(self) -> list[str]:
        return list(self._table)

    def model_cards(self) -> list[dict[str, Any]]:
        return self._cards

    def rebuild(self) -> None:
        table: dict[str, Route] = {}
        cards: list[dict[str, Any]] = []
        for backend in self.backends.values():
            canonical = backend.canonical_model
            reported = {c["id"]: c for c in backend.cards if isinstance(c.get("id"), str)}
            own: dict[str, dict[str, Any]] = dict(reported)
            for name in backend.config.models:
                own.setdefault(name, _placeholder_card(name))
            if backend.launched and not backend.config.models:
                own.setdefault(backend.config.launch.model, _placeholder_card(backend.config.launch.model))
            for name, card in own.items():
                if name in table:
                    if table[name].backend is not backend:
                        log.warning("model %r is served by %r and %r; routing it to %r",
                                    name, table[name].backend.name, backend.name, table[name].backend.name)
                    continue
                table[name] = Route(backend, None)
                cards.append(card)
            for alias in backend.config.aliases:
                if alias in table:
                    continue
                table[alias] = Route(backend, canonical)
                base = own.get(canonical) if canonical else None
                card = dict(base) if base else _placeholder_card(alias)
                card["id"] = alias
                cards.append(card)
        self._table = table
        self._cards = cards

    # -- talking to backends (never on the request path) -------------------------------------
    async def check_health(self, backend: Backend, timeout: float = 2.0) -> bool:
        """GET /health on every address; the backend is up when any address is.

        A launched backend that the supervisor has not declared ready (starting, restarting,
        failed, stopped) is not up, whatever its port answers: its state is the supervisor's.
        """
        if backend.state in SUPERVISED_STATES:
            return False
        results = await asyncio.gather(*(self._probe(u, timeout) for u in backend.upstreams))
        errors = [r for r in results if r is not None]
        if backend.state in SUPERVISED_STATES:  # the supervisor moved it while we probed
            return False
        if len(errors) < len(results):
            became_ready = backend.state != READY
            backend.state, backend.last_error = READY, None
            backend.health_failing_since = backend.last_health_error = None
            backend.breaker.record_success()
            if became_ready:
                await self.refresh_models(backend)
            return True
        backend.state, backend.last_error = UNHEALTHY, errors[0]
        backend.last_health_error = errors[0]
        if backend.health_failing_since is None:
            backend.health_failing_since = time.monotonic()
        backend.breaker.trip()
        return False

    async def _probe(self, upstream: Upstream, timeout: float) -> str | None:
        error = await health_error(upstream, timeout)
        upstream.healthy = error is None
        return error

    async def refresh_models(self, backend: Backend, timeout: float = 5.0) -> None:
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
        self.rebuild()

    async def refresh_all(self) -> None:
        await asyncio.gather(*(self.refresh_models(b) for b in self.backends.values() if b.routable))

    async def check_all(self) -> dict[str, bool]:
        names = list(self.backends)
        results = await asyncio.gather(*(self.check_health(self.backends[n]) for n in names))
        return dict(zip(names, results))

    async def monitor(self) -> None:
        """The one long-lived loop that keeps health states and model lists fresh."""
        interval = self.settings.health_check_interval
        refresh_every = self.settings.model_refresh_interval
        last_refresh = time.monotonic()
        while True:
            try:
                await self.check_all()
                if time.monotonic() - last_refresh >= refresh_every:
                    last_refresh = time.monotonic()
                    await self.refresh_all()
            except Exception:  # a bug here must not stop monitoring
                log.exception("backend monitor iteration failed")
            await asyncio.sleep(interval)

    async def aclose(self) -> None:
        await asyncio.gather(*(u.client.aclose() for b in self.backends.values() for u in b.upstreams))


async def health_error(upstream: Upstream, timeout: float) -> str | None:
    """None when the address answers GET /health with 200 (vLLM's "ready"), else why not."""
    try:
        response = await upstream.client.get("/health", timeout=timeout)
    except httpx.HTTPError as exc:
        return f"health check failed: {type(exc).__name__}"
    return None if response.status_code == 200 else f"health check answered {response.status_code}"


def _placeholder_card(name: str) -> dict[str, Any]:
    """A card for a configured name whose backend has not reported it (yet)."""
    return {
        "id": name,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "vllm",
        "root": None,
        "parent": None,
        "max_model_len": None,
    }
