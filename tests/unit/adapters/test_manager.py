"""The adapter manager's rules, edge by edge, against a fake vLLM behind `httpx.MockTransport`:
one load for many, cancellation at every point, the limit, remembered failures, restarts."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from vllm_gateway.adapters.manager import AdapterManager, LoadUnreachable
from vllm_gateway.errors import GatewayError
from vllm_gateway.metrics import GatewayMetrics
from vllm_gateway.routing.backend import Backend, Upstream
from vllm_gateway.routing.registry import Registry
from vllm_gateway.settings import Settings


class FakeVllm:
    """Runtime LoRA routes: loads wait for `gate` (when set); `answers[name]` overrides the answer."""

    def __init__(self) -> None:
        self.held: set[str] = set()
        self.loads: list[str] = []
        self.unloads: list[str] = []
        self.gate: asyncio.Event | None = None
        self.answers: dict[str, httpx.Response | Exception] = {}

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        import json

        body = json.loads(request.read())
        name = body["lora_name"]
        if request.url.path == "/v1/unload_lora_adapter":
            self.unloads.append(name)
            self.held.discard(name)
            return httpx.Response(200, text="ok")
        self.loads.append(name)
        if self.gate is not None:
            await self.gate.wait()
        answer = self.answers.get(name)
        if isinstance(answer, Exception):
            raise answer
        if answer is not None:
            return answer
        self.held.add(name)
        return httpx.Response(200, text=f"Success: LoRA adapter '{name}' added successfully.")


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def setup(fake: FakeVllm, limit: int = 2, clock: Clock | None = None, **backend: Any) -> tuple[AdapterManager, Backend]:
    config = {"name": "chat", "url": "http://vllm:8000", "models": ["base"], "max_loaded_adapters": limit,
              "adapters": {n: f"/adapters/{n}" for n in ("a", "b", "c")}, **backend}
    registry = Registry(Settings(backends=[config]), httpx.MockTransport(fake))
    return AdapterManager(GatewayMetrics(), 30.0, clock or Clock()), registry.backends["chat"]


def only(backend: Backend) -> Upstream:
    return backend.upstreams[0]


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


@pytest.mark.anyio
async def test_concurrent_requests_share_one_load_and_are_all_counted_in_flight() -> None:
    fake = FakeVllm()
    fake.gate = asyncio.Event()
    manager, backend = setup(fake)
    up = only(backend)
    waiters = [asyncio.create_task(manager.acquire(backend, up, "a")) for _ in range(10)]
    await settle()
    assert fake.loads == ["a"] and up.adapters is not None and list(up.adapters.loading) == ["a"]
    fake.gate.set()
    await asyncio.gather(*waiters)
    assert up.adapters.in_flight == {"a": 10} and list(up.adapters.loaded) == ["a"]
    assert manager.holders(backend, "a") == (up,) and manager.holders(backend, "b") == ()
    for _ in range(10):
        manager.release(backend, up, "a")
    assert up.adapters.in_flight == {}
    await manager.acquire(backend, up, "a")  # loaded: no second load
    assert fake.loads == ["a"]


@pytest.mark.anyio
async def test_a_waiter_that_gives_up_is_not_counted_and_the_load_goes_on_for_the_others() -> None:
    fake = FakeVllm()
    fake.gate = asyncio.Event()
    manager, backend = setup(fake)
    up = only(backend)
    leaving = asyncio.create_task(manager.acquire(backend, up, "a"))
    staying = asyncio.create_task(manager.acquire(backend, up, "a"))
    await settle()
    leaving.cancel()
    await settle()
    fake.gate.set()
    await staying
    assert leaving.cancelled()
    assert up.adapters is not None and up.adapters.in_flight == {"a": 1}


@pytest.mark.anyio
async def test_a_waiter_cancelled_as_the_load_finishes_gives_its_count_back() -> None:
    fake = FakeVllm()
    fake.gate = asyncio.Event()
    manager, backend = setup(fake)
    up = only(backend)
    waiter = asyncio.create_task(manager.acquire(backend, up, "a"))
    await settle()
    load = up.adapters.loading["a"] if up.adapters else None
    assert load is not None
    # Cancelled right after the load counted it in flight, before it resumed.
    load.done.add_done_callback(lambda _: waiter.cancel())
    fake.gate.set()
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled() and up.adapters is not None and up.adapters.in_flight == {}


@pytest.mark.anyio
async def test_past_the_limit_the_least_recently_used_idle_one_goes_after_the_new_one_loaded() -> None:
    fake = FakeVllm()
    manager, backend = setup(fake, limit=2)
    up = only(backend)
    for name in ("a", "b", "a"):
        await manager.acquire(backend, up, name)
        manager.release(backend, up, name)
    await manager.acquire(backend, up, "c")
    await settle()
    assert fake.unloads == ["b"] and up.adapters is not None and list(up.adapters.loaded) == ["a", "c"]


@pytest.mark.anyio
async def test_a_failed_load_costs_no_working_adapter() -> None:
    fake = FakeVllm()
    fake.answers["c"] = httpx.Response(404, json={"error": {"message": "Loading lora c failed: No adapter found for "
                                                                       "/adapters/c", "type": "NotFoundError"}})
    manager, backend = setup(fake, limit=2)
    up = only(backend)
    for name in ("a", "b"):
        await manager.acquire(backend, up, name)
        manager.release(backend, up, name)
    with pytest.raises(GatewayError) as failed:
        await manager.acquire(backend, up, "c")
    assert failed.value.status == 404 and "No adapter found" in failed.value.message
    await settle()
    assert fake.unloads == [] and up.adapters is not None and list(up.adapters.loaded) == ["a", "b"]


@pytest.mark.anyio
async def test_in_use_adapters_are_kept_over_the_limit_until_one_falls_idle() -> None:
    fake = FakeVllm()
    manager, backend = setup(fake, limit=1)
    up = only(backend)
    await manager.acquire(backend, up, "a")
    await manager.acquire(backend, up, "b")
    await settle()
    assert fake.unloads == [] and up.adapters is not None and list(up.adapters.loaded) == ["a", "b"]
    manager.release(backend, up, "b")
    await settle()
    assert fake.unloads == ["b"]  # the idle one, though `a` is older
    manager.release(backend, up, "a")
    await settle()
    assert fake.unloads == ["b"] and list(up.adapters.loaded) == ["a"]  # back at the limit: nothing more goes


@pytest.mark.anyio
async def test_a_load_waits_for_an_unload_of_the_same_adapter() -> None:
    fake = FakeVllm()
    manager, backend = setup(fake, limit=1)
    up = only(backend)
    await manager.acquire(backend, up, "a")
    manager.release(backend, up, "a")
    await manager.acquire(backend, up, "b")  # trims `a` in the background
    await manager.acquire(backend, up, "a")  # must land after that unload, or the unload would undo it
    await settle()
    assert fake.unloads == ["a"] and "a" in fake.held


@pytest.mark.anyio
async def test_a_refused_load_is_remembered_then_tried_again() -> None:
    fake = FakeVllm()
    fake.answers["a"] = httpx.Response(500, json={"error": {"message": "Call to add_lora method failed: LoRA rank 64 is "
                                                                       "greater than max_lora_rank 16.", "type": "x"}})
    clock = Clock()
    manager, backend = setup(fake, clock=clock)
    up = only(backend)
    for _ in range(3):
        with pytest.raises(GatewayError) as failed:
            await manager.acquire(backend, up, "a")
        assert failed.value.status == 400 and failed.value.code == "adapter_load_failed"
        assert "LoRA rank 64" in failed.value.message and failed.value.headers["Retry-After"] == "30"
    assert fake.loads == ["a"]
    clock.now += 31
    del fake.answers["a"]
    await manager.acquire(backend, up, "a")
    assert fake.loads == ["a", "a"]


@pytest.mark.anyio
async def test_a_busy_or_unreachable_backend_is_not_remembered() -> None:
    fake = FakeVllm()
    fake.answers["a"] = httpx.ConnectError("refused")
    fake.answers["b"] = httpx.Response(503, json={"error": {"message": "busy", "type": "x"}})
    manager, backend = setup(fake)
    up = only(backend)
    for name in ("a", "a", "b"):
        with pytest.raises(LoadUnreachable):
            await manager.acquire(backend, up, name)
    assert fake.loads == ["a", "a", "b"] and backend.adapters is not None and backend.adapters.failures == {}


@pytest.mark.anyio
async def test_already_loaded_on_the_backend_counts_as_loaded() -> None:
    fake = FakeVllm()
    fake.answers["a"] = httpx.Response(400, json={"error": {"message": "The lora adapter 'a' has already been loaded. If "
                                                                       "you want ...", "type": "InvalidUserInput"}})
    manager, backend = setup(fake)
    await manager.acquire(backend, only(backend), "a")
    assert manager.holders(backend, "a") == (only(backend),)


@pytest.mark.anyio
async def test_a_restarted_launched_backend_holds_nothing_and_forgets_its_failures() -> None:
    fake = FakeVllm()
    fake.answers["b"] = httpx.Response(404, json={"error": {"message": "No adapter found", "type": "NotFoundError"}})
    manager, backend = setup(fake, launch={"model": "base", "args": ["--enable-lora"]})
    up = only(backend)
    assert backend.lifecycle is not None
    backend.lifecycle.ready()
    await manager.acquire(backend, up, "a")
    manager.release(backend, up, "a")
    with pytest.raises(GatewayError):
        await manager.acquire(backend, up, "b")
    backend.lifecycle.ready()  # a new process
    assert manager.holders(backend, "a") == ()
    del fake.answers["b"]
    await manager.acquire(backend, up, "a")
    await manager.acquire(backend, up, "b")
    assert fake.loads == ["a", "b", "a", "b"]


@pytest.mark.anyio
async def test_a_load_that_lands_across_a_restart_is_done_again_on_the_new_process() -> None:
    fake = FakeVllm()
    fake.gate = asyncio.Event()
    manager, backend = setup(fake, launch={"model": "base", "args": ["--enable-lora"]})
    up = only(backend)
    assert backend.lifecycle is not None
    waiter = asyncio.create_task(manager.acquire(backend, up, "a"))
    await settle()
    backend.lifecycle.ready()  # restarted while the load was on its way
    fake.gate.set()
    await waiter
    assert fake.loads == ["a", "a"] and up.adapters is not None and up.adapters.epoch == backend.epoch


@pytest.mark.anyio
async def test_forget_drops_a_runtime_adapter_but_not_a_pinned_one() -> None:
    fake = FakeVllm()
    manager, backend = setup(fake, limit=3,
                             launch={"model": "base", "args": ["--enable-lora", "--lora-modules", "p=/adapters/p"]})
    up = only(backend)
    await manager.acquire(backend, up, "p")  # pinned: there without a load
    await manager.acquire(backend, up, "a")
    assert fake.loads == ["a"]
    assert manager.forget(backend, up, "a") and not manager.forget(backend, up, "a")
    assert not manager.forget(backend, up, "p")
    assert manager.holders(backend, "p") == (up,)


@pytest.mark.anyio
async def test_pinned_adapters_count_against_the_limit_and_are_never_unloaded() -> None:
    fake = FakeVllm()
    manager, backend = setup(fake, limit=2,
                             launch={"model": "base", "args": ["--enable-lora", "--lora-modules", "p=/adapters/p"]})
    up = only(backend)
    for name in ("a", "b", "c"):
        await manager.acquire(backend, up, name)
        manager.release(backend, up, name)
        await settle()
    assert fake.unloads == ["a", "b"] and up.adapters is not None and up.adapters.status()["loaded"] == ["p", "c"]
