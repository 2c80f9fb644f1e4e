"""`state.py`: the `/_sim/*` controls."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from vllm_gateway.simulator import Simulator, SimulatorConfig
from vllm_gateway.simulator.state import peak_share

from .replay import CHAT_SIM


def test_health_can_be_made_to_fail_while_everything_else_keeps_answering() -> None:
    sim = Simulator(SimulatorConfig(**CHAT_SIM))
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
            return [
                await client.post("/_sim/health", json={"status": 503}),
                await client.get("/health"),
                await client.get("/ping"),
                await client.post("/v1/chat/completions", json=body),
                await client.post("/_sim/health", json={"status": "bad"}),
                await client.post("/_sim/health", content=b"not json"),
                await client.get("/health"),  # a refused setting changed nothing
                await client.post("/_sim/health", json={"status": 200}),
                await client.get("/health"),
            ]

    set_503, health, ping, chat, bad, garbage, still, set_200, healed = asyncio.run(calls())
    assert set_503.status_code == 200 and set_503.json() == {"status": 503}
    assert health.status_code == ping.status_code == 503 and health.content == b""
    assert chat.status_code == 200
    assert bad.status_code == garbage.status_code == 400
    assert still.status_code == 503
    assert set_200.status_code == 200 and healed.status_code == 200


def dev_sim(**config: Any) -> Simulator:
    return Simulator(SimulatorConfig(models=["tiny-chat"], dev_mode=True, enable_sleep_mode=True, **config))


async def client_for(sim: Simulator) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim", timeout=30)


def test_faults_are_set_shown_and_cleared_and_bad_ones_refused() -> None:
    async def calls() -> None:
        async with await client_for(dev_sim()) as c:
            assert (await c.get("/_sim/faults")).json() == {"faults": {}}
            assert (await c.post("/_sim/faults", json={"wake": "fail", "sleep": "hang"})).json() == {
                "faults": {"wake": "fail", "sleep": "hang"}}
            assert (await c.post("/_sim/faults", json={"sleep": None})).json() == {"faults": {"wake": "fail"}}
            for bad in ({"wake": "explode"}, {"nap": "fail"}, {}, [1]):
                refused = await c.post("/_sim/faults", json=bad)
                assert refused.status_code == 400 and "sleep, wake, lora_load" in refused.json()["error"]
            assert (await c.post("/_sim/faults", content=b"nope")).status_code == 400
            assert (await c.get("/_sim/faults")).json() == {"faults": {"wake": "fail"}}

    asyncio.run(calls())


def test_a_failing_wake_is_vllms_500_and_leaves_it_asleep_then_the_next_wake_works() -> None:
    async def calls() -> None:
        sim = dev_sim()
        async with await client_for(sim) as c:
            await c.post("/sleep")
            await c.post("/_sim/faults", json={"wake": "fail"})
            failed = await c.post("/wake_up")
            assert failed.status_code == 500
            assert failed.json() == {"error": {"message": "Call to wake_up method failed: CUDA error: out of memory "
                                                          "(simulated by POST /_sim/faults)",
                                               "type": "InternalServerError", "param": None, "code": 500}}
            assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
            stats = (await c.get("/_sim/stats")).json()
            assert stats["wakes"] == 0 and all(end is not None for _, end in stats["awake_intervals"])
            assert len(stats["awake_intervals"]) == 2  # the failed attempt held memory while it ran
            assert (await c.post("/wake_up")).json() == {"status": "awake", "tags": None}

    asyncio.run(calls())


def test_a_failing_sleep_is_a_500_that_leaves_the_engine_paused_with_its_memory() -> None:
    async def calls() -> None:
        sim = dev_sim()
        async with await client_for(sim) as c:
            await c.post("/_sim/faults", json={"sleep": "fail"})
            failed = await c.post("/sleep")
            assert failed.status_code == 500 and failed.json()["error"]["message"].startswith("Call to sleep method failed")
            assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}  # the pause came first, as in vLLM
            page = (await c.get("/metrics")).text
            assert 'vllm:engine_sleep_state{engine="0",model_name="tiny-chat",sleep_state="awake"} 1.0' in page
            assert sim.state.awake_intervals[-1][1] is None and sim.state.sleeps == 0
            assert (await c.post("/wake_up")).json()["status"] == "awake"

    asyncio.run(calls())


def test_a_hanging_wake_answers_only_after_release() -> None:
    async def calls() -> None:
        sim = dev_sim()
        async with await client_for(sim) as c:
            await c.post("/sleep")
            await c.post("/_sim/faults", json={"wake": "hang"})
            waking = asyncio.create_task(c.post("/wake_up"))
            async with asyncio.timeout(10):
                while sim.state.held == 0:
                    await asyncio.sleep(0.005)
            await asyncio.sleep(0.05)
            assert not waking.done() and (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
            assert (await c.post("/_sim/release")).json() == {"released": 1}
            assert (await waking).json() == {"status": "awake", "tags": None}

    asyncio.run(calls())


def test_peak_share_adds_up_what_was_held_at_the_same_time() -> None:
    a = [[0.0, 10.0], [20.0, None]]
    b = [[10.0, 20.0]]  # takes over exactly when a lets go: no overlap
    assert peak_share([(0.5, a), (0.5, b)], now=30.0) == 0.5
    assert peak_share([(0.5, a), (0.4, [[5.0, 6.0]])], now=30.0) == 0.9
    assert peak_share([(0.3, a), (0.3, [[25.0, None]]), (0.3, [[29.0, None]])], now=30.0) == pytest.approx(0.9)


def test_two_simulators_taking_turns_never_hold_memory_together() -> None:
    async def calls() -> None:
        first, second = dev_sim(), dev_sim()
        async with await client_for(first) as one, await client_for(second) as two:
            await two.post("/sleep")  # both start awake: the second gives its memory back first
            for _ in range(3):
                await one.post("/sleep")
                await two.post("/wake_up")
                await two.post("/sleep")
                await one.post("/wake_up")
            one_held, two_held = [(await c.get("/_sim/stats")).json()["awake_intervals"] for c in (one, two)]
        assert len(one_held) == len(two_held) == 4
        assert peak_share([(0.6, one_held), (0.6, two_held)]) == pytest.approx(1.2)  # at start-up both held it
        assert peak_share([(0.6, one_held), (0.6, two_held[1:])]) == pytest.approx(0.6)  # then never together

    asyncio.run(calls())
