"""The adapter manager: the only writer of which adapters are loaded on which backend address.

A request for a configured adapter calls `acquire` on the address it is going to, and `release`
when it is done (the exchange does both, `forwarding.exchange`). Between the two the adapter is
loaded there and counted in flight, so it is never unloaded under the request.

- One load per address and adapter, however many requests arrive for it: they all wait on it and
  are counted in flight the moment it succeeds. The load runs in its own task, so a request that
  gives up (its deadline, its client leaving) does not cancel it for the others.
- Past `limit` adapters on an address (pinned ones count), the least recently used one with nothing
  in flight is unloaded, right after the new one loaded: a load that fails (a bad path) never costs
  a working adapter, and vLLM keeps at most `--max-cpu-loras` in memory whatever it has registered,
  so the moment over the limit costs no memory. When every one is in use, none is unloaded (no
  request waits on another adapter's traffic) until one falls idle (`release`).
- A refused load (vLLM's 404 or 400/500) is remembered for `failure_memory` seconds: requests in
  that time get the same error at once, with vLLM's reason, instead of each trying again. A backend
  that is busy or cannot be reached is not remembered: that is the exchange's retry and breaker
  business.
- A launched backend that restarted (`Lifecycle.epoch` moved) has lost its runtime adapters: the
  record starts empty (and the remembered failures go) and adapters load again on first use. An
  external one restarts without telling: when vLLM answers a request "model does not exist" for an
  adapter the record holds, the exchange calls `forget`, then acquires again (one reload).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import httpx

from ..errors import Conflict, GatewayTimeout, ServiceUnavailable
from . import client
from .state import AddressAdapters, BackendAdapters, Failure, Load

if TYPE_CHECKING:  # routing holds the records (`Backend.adapters`); this package must not import it back
    from ..metrics import GatewayMetrics
    from ..routing.backend import Backend, Upstream

log = logging.getLogger("vllm_gateway.adapters")
FAILURE_MEMORY = 30.0  # seconds a refused load is answered from memory before it is tried again
UNLOAD_TIMEOUT = 30.0
# A load may outlive the requests waiting on it (a hub download), so later ones join it rather than
# start another: it is bounded by the backend's `timeouts.response_head`, and by at least this.
LOAD_TIMEOUT_MIN = 300.0
_LOADED, _STALE = "loaded", "stale"


class LoadUnreachable(Exception):
    """The load request did not get an answer (connection, timeout) or the backend was busy:
    mapped by the caller like any failure to reach the backend."""

    def __init__(self, cause: Exception | None, detail: str = "") -> None:
        super().__init__(detail or repr(cause))
        self.cause, self.detail = cause, detail


class AdapterManager:
    def __init__(self, metrics: GatewayMetrics, failure_memory: float = FAILURE_MEMORY,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.failure_memory = failure_memory
        self.clock = clock
        self._tasks: set[asyncio.Task[None]] = set()

    # -- what requests call ----------------------------------------------------------------------
    @staticmethod
    def holders(backend: Backend, name: str) -> tuple[Upstream, ...]:
        """The addresses that hold `name` now: the ones a request for it prefers."""
        epoch = backend.epoch
        return tuple(u for u in backend.upstreams
                     if u.adapters is not None and u.adapters.epoch == epoch and u.adapters.holds(name))

    async def acquire(self, backend: Backend, upstream: Upstream, name: str) -> None:
        """Return once `name` is loaded on `upstream`, counted in flight there (call `release` once).

        Raises the remembered `GatewayError` of a refused load, or `LoadUnreachable`. The caller
        bounds the wait by cancelling; a load others wait on goes on."""
        adapters, record = backend.adapters, upstream.adapters
        assert adapters is not None and record is not None, f"backend {backend.name!r} has no adapters"
        while True:
            self._sync(backend, adapters, record)
            if record.holds(name):
                if name in record.loaded:
                    record.loaded.move_to_end(name)
                record.in_flight[name] = record.in_flight.get(name, 0) + 1
                return
            failure = adapters.failure(name, self.clock())
            if failure is not None:
                raise failure.error(self.clock())
            load = record.loading.get(name)
            if load is None:
                load = self._start_load(backend, adapters, upstream, record, name)
            outcome = await self._wait(load, record, name)
            if outcome == _LOADED:
                return
            if isinstance(outcome, Failure):
                raise outcome.error(self.clock())
            if isinstance(outcome, LoadUnreachable):
                raise outcome
            # _STALE: the backend restarted while it loaded; try on the new process

    async def acquire_within(self, backend: Backend, upstream: Upstream, name: str, timeout: float) -> None:
        """`acquire` for a caller without an exchange's watchdog (a realtime session): every failure
        as the `GatewayError` its client gets."""
        try:
            async with asyncio.timeout(timeout):
                await self.acquire(backend, upstream, name)
        except TimeoutError:
            raise GatewayTimeout(f"adapter `{name}` was not loaded on backend {backend.name!r} within {timeout:g} s "
                                 f"(timeouts.response_head); the load goes on: retry shortly",
                                 code="adapter_load_timeout") from None
        except LoadUnreachable as failure:
            raise ServiceUnavailable(f"backend {backend.name!r} could not load adapter `{name}` ({failure}); retry "
                                     f"in a few seconds (GET /status shows backend states)",
                                     headers={"Retry-After": "2"}) from None

    def release(self, backend: Backend, upstream: Upstream, name: str) -> None:
        record = upstream.adapters
        assert record is not None and backend.adapters is not None
        left = record.in_flight.get(name, 0) - 1
        if left > 0:
            record.in_flight[name] = left
            return
        record.in_flight.pop(name, None)
        self._trim_soon(backend, upstream, record)

    def forget(self, backend: Backend, upstream: Upstream, name: str) -> bool:
        """The backend answered that it does not hold `name`: True when the record thought it did
        (then a reload can help; a pinned adapter is vLLM's to load)."""
        record = upstream.adapters
        if record is None or name not in record.loaded:
            return False
        del record.loaded[name]
        log.warning("backend %r (%s) no longer holds adapter %r (it restarted?); loading it again",
                    backend.name, upstream.url, name)
        self._gauge(backend)
        return True

    # -- what the operator asks (`api.admin`) ----------------------------------------------------
    async def load_everywhere(self, backend: Backend, name: str, timeout: float = LOAD_TIMEOUT_MIN) -> None:
        """Load `name` on every address of `backend` now (as a request would, then let it go)."""
        for upstream in backend.upstreams:
            await self.acquire_within(backend, upstream, name, timeout)
            self.release(backend, upstream, name)

    async def unload_everywhere(self, backend: Backend, name: str) -> None:
        """Unload `name` wherever it is loaded; refused while a request uses it, and for a pinned one."""
        for upstream in backend.upstreams:
            record = upstream.adapters
            assert backend.adapters is not None and record is not None
            self._sync(backend, backend.adapters, record)
            if name in record.pinned:
                raise Conflict(f"adapter `{name}` is pinned (listed in --lora-modules): vLLM loads it at every start "
                               f"and the gateway never unloads it", param="adapter", code="adapter_pinned")
            if record.in_flight.get(name):
                raise Conflict(f"adapter `{name}` is in use on {upstream.url} ({record.in_flight[name]} requests); "
                               f"unload it once they are done", param="adapter", code="adapter_in_use")
        for upstream in backend.upstreams:
            record = upstream.adapters
            assert record is not None
            if name in record.loaded:
                await self._unload(backend, upstream, record, name)

    async def aclose(self) -> None:
        """At shutdown: end loads and unloads still running."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    # -- loading ---------------------------------------------------------------------------------
    def _sync(self, backend: Backend, adapters: BackendAdapters, record: AddressAdapters) -> None:
        """A new process of a launched backend holds none of the runtime adapters of the last one."""
        epoch = backend.epoch
        if record.epoch != epoch:
            if record.loaded:
                log.info("backend %r restarted: adapters %s load again on first use", backend.name,
                         ", ".join(record.loaded))
            record.loaded.clear()
            adapters.failures.clear()  # a fresh process gets a fresh try
            record.epoch = epoch
            self._gauge(backend)

    def _start_load(self, backend: Backend, adapters: BackendAdapters, upstream: Upstream, record: AddressAdapters,
                    name: str) -> Load:
        load = Load(asyncio.get_running_loop().create_future())
        record.loading[name] = load
        load.task = self._spawn(self._load(backend, adapters, upstream, record, name, load),
                                f"adapters-load-{backend.name}-{name}")
        return load

    @staticmethod
    async def _wait(load: Load, record: AddressAdapters, name: str) -> object:
        load.waiters += 1
        try:
            return await asyncio.shield(load.done)
        except asyncio.CancelledError:
            if load.done.done() and not load.done.cancelled() and load.done.result() == _LOADED:
                # Counted in flight by the load as it finished, just before this request gave up.
                left = record.in_flight.get(name, 0) - 1
                if left > 0:
                    record.in_flight[name] = left
                else:
                    record.in_flight.pop(name, None)
            else:
                load.waiters -= 1
            raise

    async def _load(self, backend: Backend, adapters: BackendAdapters, upstream: Upstream, record: AddressAdapters,
                    name: str, load: Load) -> None:
        spec = adapters.specs[name]
        epoch = record.epoch
        outcome: object = _STALE
        try:
            pending = record.unloading.get(name)
            if pending is not None:  # its unload must land first, or it would undo this load
                await asyncio.wait([pending])
            started = time.perf_counter()
            try:
                answer = await client.load(upstream.client, spec, max(backend.timeouts.response_head, LOAD_TIMEOUT_MIN))
            except httpx.HTTPError as exc:
                log.warning("backend %r (%s): loading adapter %r got no answer: %s", backend.name, upstream.url,
                            name, type(exc).__name__)
                outcome = LoadUnreachable(exc)
                return
            took = time.perf_counter() - started
            if answer.outcome == client.LOADED:
                if backend.epoch != epoch:
                    return  # loaded into a process that has since been replaced, or into the old one: unknown
                record.loaded[name] = time.time()
                record.in_flight[name] = record.in_flight.get(name, 0) + load.waiters
                self.metrics.adapter_loaded(backend.name, name, took)
                self._gauge(backend)
                self._trim_soon(backend, upstream, record)
                log.info("backend %r (%s): loaded adapter %r in %.3f s", backend.name, upstream.url, name, took)
                outcome = _LOADED
            elif answer.outcome == client.BUSY:
                outcome = LoadUnreachable(None, f"answered {answer.status} to the adapter load: {answer.reason}")
            else:
                outcome = self._remember(backend, adapters, name, answer)
        except Exception as exc:  # a bug here must not leave the waiters hanging
            log.exception("loading adapter %r on backend %r failed", name, backend.name)
            outcome = LoadUnreachable(exc, "the gateway failed loading the adapter; see its log")
        finally:
            if record.loading.get(name) is load:
                del record.loading[name]
            if not load.done.done():
                load.done.set_result(outcome)

    def _remember(self, backend: Backend, adapters: BackendAdapters, name: str, answer: client.LoadAnswer) -> Failure:
        if answer.outcome == client.NOT_FOUND:
            status, code = 404, "adapter_not_found"
        elif answer.outcome == client.NO_ROUTES or answer.status in (401, 403):
            status, code = 502, "adapter_loading_disabled" if answer.outcome == client.NO_ROUTES else "adapter_load_refused"
        else:
            status, code = 400, "adapter_load_failed"
        failure = Failure(answer.reason, status, code, self.clock() + self.failure_memory, adapters.specs[name],
                          backend.name)
        adapters.failures[name] = failure
        self.metrics.adapter_load_failed(backend.name, name)
        log.error("backend %r: adapter %r could not be loaded from %r (HTTP %d): %s; answering requests for it with "
                  "this error for %g s", backend.name, name, adapters.specs[name].lora_path, answer.status,
                  answer.reason, self.failure_memory)
        return failure

    # -- making room -----------------------------------------------------------------------------
    def _trim_soon(self, backend: Backend, upstream: Upstream, record: AddressAdapters) -> None:
        assert backend.adapters is not None
        if record.resident() > backend.adapters.limit and (record.trimming is None or record.trimming.done()):
            record.trimming = self._spawn(self._trim(backend, upstream, record), f"adapters-trim-{backend.name}")

    async def _trim(self, backend: Backend, upstream: Upstream, record: AddressAdapters) -> None:
        assert backend.adapters is not None
        while record.resident() > backend.adapters.limit:
            victim = record.idle_victim()
            if victim is None:
                return
            await self._unload(backend, upstream, record, victim)

    async def _unload(self, backend: Backend, upstream: Upstream, record: AddressAdapters, name: str) -> None:
        """Out of the record at once (so no request picks it), then off the backend, in a task of its
        own that a load of the same adapter waits for."""
        del record.loaded[name]
        self._gauge(backend)
        task = self._spawn(self._unload_call(backend, upstream, name), f"adapters-unload-{backend.name}-{name}")
        record.unloading[name] = task
        try:
            await asyncio.wait([task])
        finally:
            if record.unloading.get(name) is task:
                del record.unloading[name]

    async def _unload_call(self, backend: Backend, upstream: Upstream, name: str) -> None:
        try:
            gone = await client.unload(upstream.client, name, UNLOAD_TIMEOUT)
        except httpx.HTTPError as exc:
            log.warning("backend %r (%s): unloading adapter %r got no answer (%s); counting it as gone",
                        backend.name, upstream.url, name, type(exc).__name__)
            return
        if gone:
            self.metrics.adapter_unloaded(backend.name, name)
            log.info("backend %r (%s): unloaded adapter %r (least recently used, idle)", backend.name, upstream.url,
                     name)
        else:
            log.warning("backend %r (%s): unloading adapter %r was refused; counting it as gone", backend.name,
                        upstream.url, name)

    # -- bookkeeping -----------------------------------------------------------------------------
    def _gauge(self, backend: Backend) -> None:
        self.metrics.adapters_loaded.labels(backend.name).set(
            sum(u.adapters.resident() for u in backend.upstreams if u.adapters is not None))

    def _spawn(self, coro: object, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.get_running_loop().create_task(coro, name=name)  # type: ignore[arg-type]
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task


__all__ = ["FAILURE_MEMORY", "AdapterManager", "LoadUnreachable"]
