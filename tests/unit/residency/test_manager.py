"""The residency manager with in-process simulators as its backends (through httpx's ASGI transport)
and stand-in supervisor units, so each rule is seen in isolation: one wake for many requests, arrival
order, drains that run out, the NVML and host-RAM guards, failed wakes."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest

from vllm_gateway.errors import GatewayError, ServiceUnavailable
from vllm_gateway.metrics import GatewayMetrics
from vllm_gateway.residency.manager import ResidencyManager, build_residency
from vllm_gateway.routing.backend import Backend
from vllm_gateway.routing.registry import Registry
from vllm_gateway.routing.state import ASLEEP, AWAKE, FAILED, PARKED, READY
from vllm_gateway.settings import Settings
from vllm_gateway.simulator import Simulator, SimulatorConfig
from vllm_gateway.supervise.residence import Parking
from vllm_gateway.supervise.turn import LoadingTurn


class Hosts(httpx.AsyncBaseTransport):
    """One ASGI app per backend host."""

    def __init__(self, apps: dict[str, Simulator]) -> None:
        self.transports = {host: httpx.ASGITransport(app=app) for host, app in apps.items()}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        return await self.transports[request.url.host].handle_async_request(request)


class FakeUnit:
    """Plays the supervisor for one backend: parking ends 'the process', unparking starts it."""

    def __init__(self, backend: Backend, sim: Simulator, start_error: str | None = None) -> None:
        self.backend, self.sim, self.start_error = backend, sim, start_error
        self.parking = Parking(parked=False)
        self.parks = self.unparks = 0

    @property
    def running(self) -> bool:
        return not self.parking.is_parked

    async def park(self) -> None:
        self.parks += 1
        assert self.backend.lifecycle is not None
        self.backend.lifecycle.parked()
        self.parking.reached()

    def unpark(self) -> asyncio.Future[str | None]:
        self.unparks += 1
        future: asyncio.Future[str | None] = asyncio.get_running_loop().create_future()
        self.parking.is_parked = False
        assert self.backend.lifecycle is not None
        if self.start_error is None:
            self.backend.lifecycle.ready()
            self.sim.parts.sleep.sleeping_tags.clear()  # a fresh process: awake
        future.set_result(self.start_error)
        return future


class Holder:
    def __init__(self) -> None:
        self.evicted: GatewayError | None = None

    def evict(self, error: GatewayError) -> None:
        self.evicted = error


def backend_config(name: str, **launch: Any) -> dict[str, Any]:
    launch = {"model": f"m-{name}", "gpu_memory_utilization": 0.5, "residency": "on_demand", "min_awake": 0, **launch}
    return {"name": name, "url": f"http://{name}.sim", "launch": launch}


@asynccontextmanager
async def manager(*, memory_probe: Any = None, weights: dict[str, int] | None = None, max_swap_delay: float = 10.0,
                  start_errors: dict[str, str] | None = None, **launch: Any) -> AsyncIterator[tuple[ResidencyManager, dict[str, Any]]]:
    """Backends a (awake) and b (asleep in its process), one at a time within the budget."""
    settings = Settings(backends=[backend_config("a", **launch), backend_config("b", **launch)],
                        gpu={"memory_budget": 0.9, "max_swap_delay": max_swap_delay})
    sims = {name: Simulator(SimulatorConfig(models=[f"m-{name}"], dev_mode=True, enable_sleep_mode=True))
            for name in ("a", "b")}
    registry = Registry(settings, Hosts({f"{n}.sim": s for n, s in sims.items()}))
    metrics = GatewayMetrics()
    built = build_residency(settings, registry, metrics, LoadingTurn(), weights_bytes=weights, memory_probe=memory_probe)
    assert built is not None
    units = {}
    for name, backend in registry.backends.items():
        assert backend.lifecycle is not None and backend.residency is not None
        backend.lifecycle.ready()
        units[name] = FakeUnit(backend, sims[name], (start_errors or {}).get(name))
    built.attach(units.values())
    registry.backends["a"].residency.started()  # type: ignore[union-attr]
    registry.backends["b"].residency.asleep(cold=False)  # type: ignore[union-attr]
    await sleeper(sims["b"])
    built.start()
    try:
        yield built, {"sims": sims, "registry": registry, "units": units, "metrics": metrics}
    finally:
        await built.stop()
        await registry.aclose()


async def sleeper(sim: Simulator) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as c:
        assert (await c.post("/sleep?level=1")).status_code == 200


@pytest.mark.anyio
async def test_many_requests_for_a_sleeping_model_cause_one_wake_and_go_in_arrival_order() -> None:
    async with manager() as (mgr, parts):
        b = parts["registry"].backends["b"]
        order: list[int] = []

        async def request(index: int) -> None:
            holder = Holder()
            await mgr.enter(b, holder)
            order.append(index)
            await asyncio.sleep(0.01)
            mgr.leave(b, holder)

        await asyncio.gather(*(request(i) for i in range(8)))
        assert order == list(range(8))
        assert parts["sims"]["b"].state.wakes == 1 and parts["sims"]["a"].state.sleeps == 1
        assert b.residency.state == AWAKE and b.residency.swaps == {"sleep": 0, "wake": 1}
        a = parts["registry"].backends["a"]
        assert a.residency.state == ASLEEP and a.residency.swaps["sleep"] == 1
        metrics = parts["metrics"].registry
        assert metrics.get_sample_value("gateway_request_wait_seconds_count", {"reason": "wake"}) == 8
        assert metrics.get_sample_value("gateway_backend_swaps_total", {"backend": "b", "direction": "wake"}) == 1
        assert metrics.get_sample_value("gateway_backend_awake", {"backend": "b"}) == 1
        assert metrics.get_sample_value("gateway_backend_awake", {"backend": "a"}) == 0


@pytest.mark.anyio
async def test_a_busy_backend_drains_then_its_stragglers_are_evicted_and_the_other_wakes() -> None:
    async with manager(max_swap_delay=0.1, drain_timeout=0.3) as (mgr, parts):
        a, b = parts["registry"].backends["a"], parts["registry"].backends["b"]
        straggler = Holder()
        await mgr.enter(a, straggler)
        waiting = asyncio.ensure_future(mgr.enter(b, Holder()))
        await asyncio.sleep(0.2)
        assert a.state == "going_to_sleep" and not waiting.done()
        late = asyncio.ensure_future(mgr.enter(a, Holder()))  # a new request for a waits for a's next wake
        await asyncio.sleep(0.3)
        assert isinstance(straggler.evicted, ServiceUnavailable) and straggler.evicted.code == "backend_sleeping"
        assert not late.done()
        late.cancel()
        mgr.leave(a, straggler)  # what the exchange does once it ended the stream
        await asyncio.wait_for(waiting, 5)
        assert b.residency.state == AWAKE and a.residency.state == ASLEEP
        assert parts["sims"]["a"].state.sleeps == 1


@pytest.mark.anyio
async def test_a_process_that_keeps_its_gpu_memory_after_a_sleep_is_restarted() -> None:
    async def probe(name: str) -> tuple[int, int]:
        return 30 * 2**30, 80 * 2**30  # 30 of its 40 GiB share still held

    async with manager(memory_probe=probe) as (mgr, parts):
        a, b = parts["registry"].backends["a"], parts["registry"].backends["b"]
        await mgr.wake_now("b")
        assert parts["units"]["a"].parks == 1 and a.lifecycle.state == PARKED
        assert a.residency.cold and "still held 30.0 GiB" in a.residency.error
        assert b.residency.state == AWAKE


@pytest.mark.anyio
async def test_too_little_host_ram_for_a_level_one_sleep_stops_the_process_instead() -> None:
    async with manager(weights={"a": 2**50, "b": 2**20}) as (mgr, parts):
        a = parts["registry"].backends["a"]
        await mgr.wake_now("b")
        assert parts["sims"]["a"].state.sleeps == 0 and parts["units"]["a"].parks == 1
        assert "host RAM too short" in a.residency.error


@pytest.mark.anyio
async def test_a_failed_cold_wake_fails_its_waiters_with_the_reason_and_leaves_it_failed() -> None:
    async with manager(swap="restart", start_errors={"b": "exited with exit code 1 while loading"}) as (mgr, parts):
        b = parts["registry"].backends["b"]
        b.residency.cold = True
        parts["units"]["b"].parking.reached()  # parked, as a restart-mode unit starts
        with pytest.raises(ServiceUnavailable) as info:
            await asyncio.wait_for(mgr.enter(b, Holder()), 5)
        assert info.value.code == "wake_failed" and "exit code 1 while loading" in info.value.message
        assert int(info.value.headers["Retry-After"]) >= 1
        assert b.residency.state == FAILED and b.residency.retry_in() > 0
        # Refused at once while it may not be tried again.
        with pytest.raises(ServiceUnavailable):
            await asyncio.wait_for(mgr.enter(b, Holder()), 1)
        a = parts["registry"].backends["a"]
        holder = Holder()
        await asyncio.wait_for(mgr.enter(a, holder), 1)  # the other model is unaffected
        mgr.leave(a, holder)


@pytest.mark.anyio
async def test_the_operators_sleep_waits_for_requests_in_flight() -> None:
    async with manager() as (mgr, parts):
        a = parts["registry"].backends["a"]
        holder = Holder()
        await mgr.enter(a, holder)
        asked = asyncio.ensure_future(mgr.sleep_now("a"))
        await asyncio.sleep(0.1)
        assert a.state == "going_to_sleep" and not asked.done()
        mgr.leave(a, holder)
        assert await asyncio.wait_for(asked, 5) > 0
        assert a.residency.state == ASLEEP and not a.residency.cold  # slept in its process
        assert a.lifecycle.state == READY
