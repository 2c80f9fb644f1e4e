"""vLLM's sleep routes as the manager drives them, against the simulator (vLLM 0.32's shapes and
rules: dev mode, `--enable-sleep-mode`, level 1/2), in-process through httpx's ASGI transport."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from vllm_gateway.residency.client import SleepClient, SwapFailed
from vllm_gateway.simulator import Simulator, SimulatorConfig


def simulator(**config: Any) -> Simulator:
    return Simulator(SimulatorConfig(**{"models": ["m"], "dev_mode": True, "enable_sleep_mode": True, **config}))


def sleeper(sim: Simulator, timeout: float = 5.0) -> SleepClient:
    return SleepClient(httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim"), timeout)


@pytest.mark.anyio
async def test_level_one_sleeps_frees_the_memory_and_wakes() -> None:
    sim = simulator()
    client = sleeper(sim)
    await client.sleep(1)
    assert await client.is_sleeping() and sim.state.awake_intervals[-1][1] is not None
    await client.wake(1)
    assert not await client.is_sleeping() and sim.state.awake_intervals[-1][1] is None
    assert sim.state.sleeps == 1 and sim.state.wakes == 1


@pytest.mark.anyio
async def test_level_two_is_woken_with_its_full_sequence() -> None:
    sim = simulator()
    client = sleeper(sim)
    await client.sleep(2)
    assert sim.parts.sleep.weights_valid is False  # level 2 discarded them
    await client.wake(2)
    assert sim.parts.sleep.weights_valid is True and not await client.is_sleeping()
    assert [p for p in sim.state.paths if p in ("/wake_up", "/collective_rpc", "/reset_prefix_cache", "/is_sleeping")] \
        == ["/wake_up", "/collective_rpc", "/reset_prefix_cache", "/is_sleeping"]
    assert sim.state.paths["/wake_up"] == 2  # weights, then kv_cache


@pytest.mark.anyio
async def test_a_plain_wake_up_after_level_two_would_serve_garbage_so_reload_comes_before_kv_cache() -> None:
    sim = simulator()
    client = sleeper(sim)
    await client.sleep(2)
    assert await client.wake_up(["weights"]) is False  # a partial wake: the KV cache still sleeps
    await client.reload_weights()
    assert await client.wake_up(["kv_cache"]) is True


@pytest.mark.anyio
async def test_failures_say_what_answered_what() -> None:
    sim = simulator()
    client = sleeper(sim)
    sim.state.faults["sleep"] = "fail"
    with pytest.raises(SwapFailed, match=r"POST /sleep answered 500: .*out of memory \(simulated"):
        await client.sleep(1)
    await client.sleep(1)
    sim.state.faults["wake"] = "fail"
    with pytest.raises(SwapFailed, match="POST /wake_up answered 500"):
        await client.wake(1)
    no_dev = sleeper(Simulator(SimulatorConfig(models=["m"])))
    with pytest.raises(SwapFailed, match="VLLM_SERVER_DEV_MODE=1"):
        await no_dev.sleep(1)


@pytest.mark.anyio
async def test_a_hung_call_times_out() -> None:
    sim = simulator()
    client = sleeper(sim, timeout=0.2)
    sim.state.faults["sleep"] = "hang"
    with pytest.raises(SwapFailed, match=r"did not answer within 0\.2 s"):
        await client.sleep(1)
    sim.state.release_held()
