"""`dev.py`: the dev-mode routes answer what a real vLLM 0.32.0 answered, in the same order of calls."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from vllm_gateway.simulator import Simulator, SimulatorConfig

from .captures import record, recorded_sleep_state, replay, sleep_state_lines

DEV_SIM: dict[str, Any] = {"models": ["tiny-chat"], "dev_mode": True}


def run(sim: Simulator, steps: Callable[[httpx.AsyncClient], Awaitable[None]]) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
            await steps(client)

    asyncio.run(main())


async def replay_all(client: httpx.AsyncClient, *names: str) -> None:
    for name in names:
        if name.startswith("metrics_"):
            page = (await client.get("/metrics")).text
            assert sleep_state_lines(page) == recorded_sleep_state(name), name
        else:
            await replay(client, name)


def test_sleep_wake_and_is_sleeping_answer_as_recorded() -> None:
    run(Simulator(SimulatorConfig(**DEV_SIM)), lambda c: replay_all(
        c, "is_sleeping_awake", "metrics_sleep_awake", "sleep_default", "is_sleeping_asleep", "metrics_sleep_asleep",
        "health_asleep", "wake_up_all", "wake_up_not_sleeping"))


def test_bad_query_values_get_fastapis_validation_error_in_vllms_shape() -> None:
    run(Simulator(SimulatorConfig(**DEV_SIM)), lambda c: replay_all(
        c, "sleep_bad_level=5", "sleep_bad_level=abc", "sleep_bad_mode=x", "sleep_bad_level=-1&mode=y",
        "sleep_bad_level=1.5", "sleep_bad_level=2&level=9", "reset_prefix_cache_bad", "is_sleeping_awake"))


def test_wrong_methods_are_405() -> None:
    run(Simulator(SimulatorConfig(**DEV_SIM)), lambda c: replay_all(
        c, "sleep_get_405", "wake_get_405", "is_sleeping_post_405"))


def test_a_partial_wake_keeps_it_asleep_until_every_tag_is_awake() -> None:
    run(Simulator(SimulatorConfig(**DEV_SIM)), lambda c: replay_all(
        c, "sleep_level1", "wake_weights", "is_sleeping_partial", "metrics_sleep_partial", "wake_weights_again",
        "wake_bogus_tag", "wake_scheduling_only", "wake_kv", "is_sleeping_awake"))


def test_level_0_only_pauses_and_release_kv_cache_needs_that_pause() -> None:
    async def steps(c: httpx.AsyncClient) -> None:
        await replay_all(c, "release_kv_awake", "sleep_level0", "is_sleeping_level0", "metrics_sleep_level0")
        # A GPU engine frees its KV cache here (the recorded CPU build refused: "not supported on CPU").
        released = await c.post("/release_kv_cache_memory")
        assert released.status_code == 200 and released.json() == {"status": "kv_cache_released"}
        await replay_all(c, "is_sleeping_released", "wake_scheduling_after_release", "wake_kv_after_release")

    run(Simulator(SimulatorConfig(**DEV_SIM)), steps)


def test_the_level_2_sequence_and_the_rpc_and_cache_routes() -> None:
    run(Simulator(SimulatorConfig(**DEV_SIM)), lambda c: replay_all(
        c, "sleep_level2", "metrics_sleep_level2", "sleep_again_level1", "metrics_sleep_again", "wake_weights_l2",
        "rpc_reload", "wake_kv_l2", "reset_prefix_cache", "rpc_no_method", "rpc_not_json", "rpc_array", "rpc_empty"))


@pytest.mark.parametrize(("backend", "message"), [
    ("uni", "Call to collective_rpc method failed: Method 'nope' is not implemented."),
    ("mp", ("Call to collective_rpc method failed: Worker failed with error ''Worker' object has no attribute "
           "'nope'', please check the stack trace above for the root cause")),
])
def test_an_unknown_rpc_method_is_a_500_worded_by_the_executor(backend: str, message: str) -> None:
    recorded = record("rpc_unknown")["body"]  # the CPU build: mp, and its worker class is CPUWorker
    assert recorded.replace("CPUWorker", "Worker") == (
        '{"error":{"message":"Call to collective_rpc method failed: Worker failed with error \'\'Worker\' object has '
        'no attribute \'nope\'\', please check the stack trace above for the root cause","type":"InternalServerError",'
        '"param":null,"code":500}}')

    async def steps(c: httpx.AsyncClient) -> None:
        answer = await c.post("/collective_rpc", json={"method": "nope"})
        assert answer.status_code == 500
        assert answer.json() == {"error": {"message": message, "type": "InternalServerError", "param": None, "code": 500}}

    run(Simulator(SimulatorConfig(**DEV_SIM, executor_backend=backend)), steps)


@pytest.mark.parametrize("path", ["/sleep", "/wake_up", "/collective_rpc", "/is_sleeping", "/reset_prefix_cache",
                                  "/release_kv_cache_memory"])
def test_without_dev_mode_the_routes_do_not_exist(path: str) -> None:
    assert record("plain_post_/sleep")["body"] == '{"detail":"Not Found"}'

    async def steps(c: httpx.AsyncClient) -> None:
        for method in ("GET", "POST"):
            answer = await c.request(method, path)
            assert (answer.status_code, answer.text) == (404, '{"detail":"Not Found"}')

    run(Simulator(SimulatorConfig(models=["tiny-chat"])), steps)


def test_sleep_operations_have_vllms_duration_and_in_flight_metrics_from_the_first_call() -> None:
    async def steps(c: httpx.AsyncClient) -> None:
        before = (await c.get("/metrics")).text
        assert "vllm:sleep_mode_operation" not in before  # vLLM creates them on the first sleep-mode call
        await c.post("/sleep")
        await c.post("/wake_up")
        page = (await c.get("/metrics")).text
        assert 'vllm:sleep_mode_operation_duration_seconds_count{operation="sleep"} 1.0' in page
        assert 'vllm:sleep_mode_operation_duration_seconds_count{operation="wake"} 1.0' in page
        assert 'vllm:sleep_mode_operation_duration_seconds_bucket{le="600.0",operation="sleep"} 1.0' in page
        assert 'vllm:sleep_mode_operations_in_flight{operation="sleep"} 0.0' in page
        recorded = record("metrics_sleep_asleep")["body"]
        assert 'vllm:sleep_mode_operations_in_flight{operation="sleep"} 0.0' in recorded

    run(Simulator(SimulatorConfig(**DEV_SIM)), steps)
