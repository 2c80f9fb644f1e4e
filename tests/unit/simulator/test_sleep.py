"""`sleep.py` (with `engine.py`): what clients see around a sleep, checked against the real vLLM 0.32.0
behaviour recorded in `vllm_dev_sleep_lora.json` where the recording shows it."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable
from typing import Any

import httpx
import pytest

from vllm_gateway.simulator import EMBEDDING, Simulator, SimulatorConfig, shapes

from .captures import payloads, record
from .replay import shape

Steps = Callable[[httpx.AsyncClient, Simulator], Awaitable[None]]


def run(steps: Steps, **config: Any) -> Simulator:
    sim = Simulator(SimulatorConfig(**{"models": ["tiny-chat"], "dev_mode": True, **config}))

    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim", timeout=30) as c:
            await steps(c, sim)

    asyncio.run(main())
    return sim


def chat(max_tokens: int = 3, stream: bool = False, usage: bool = False, model: str = "tiny-chat") -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}
    if stream:
        body["stream"] = True
        if usage:
            body["stream_options"] = {"include_usage": True}
    return body


async def until(predicate: Callable[[], bool]) -> None:
    async with asyncio.timeout(10):
        while not predicate():
            await asyncio.sleep(0.005)


def recorded_stream(name: str) -> list[Any]:
    rec = record(name)
    return [p if p == "[DONE]" else json.loads(p) for p in rec.get("events") or rec["tail"]]


def first_token_out(sim: Simulator) -> bool:
    labels = {"model_name": "tiny-chat", "engine": "0"}
    return bool(sim.metrics.registry.get_sample_value("vllm:time_to_first_token_seconds_count", labels))


def test_a_request_that_arrives_while_asleep_waits_and_is_served_after_the_wake() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        assert (await c.post("/sleep")).json() == {"status": "sleeping", "level": 1}
        queued = asyncio.create_task(c.post("/v1/chat/completions", json=chat()))
        await until(lambda: len(sim.parts.engine.waiting) == 1)
        await asyncio.sleep(0.05)
        assert not queued.done()  # vLLM queues it: no error, no answer
        assert (await c.get("/health")).status_code == 200
        assert (await c.post("/tokenize", json={"prompt": "hi"})).status_code == 200  # the API server's own work
        assert 'vllm:num_requests_waiting{engine="0",model_name="tiny-chat"} 1.0' in (await c.get("/metrics")).text
        assert (await c.post("/wake_up")).json() == {"status": "awake", "tags": None}
        answer = await queued
        assert answer.status_code == 200
        assert answer.json()["choices"][0]["message"]["content"] == "".join(shapes.word(i) for i in range(3))

    run(steps)


@pytest.mark.parametrize(("usage", "name"), [(False, "abort_stream"), (True, "abort_stream_usage")])
def test_abort_ends_a_running_stream_with_vllms_abort_chunk(usage: bool, name: str) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        stream = asyncio.create_task(c.post("/v1/chat/completions", json=chat(400, stream=True, usage=usage)))
        await until(lambda: first_token_out(sim))  # the first token is out
        assert (await c.post("/sleep?mode=abort")).json() == {"status": "sleeping", "level": 1}
        assert not sim.parts.engine.jobs  # vLLM answers the sleep once the abort outputs are out
        events = payloads((await stream).text)
        tokens = [e for e in events[:-1] if e["choices"] and "role" not in e["choices"][0]["delta"]]
        last = tokens[-1]["choices"][0]
        assert last["finish_reason"] == "abort" and last["delta"] == {"content": ""}
        assert len(tokens) - 1 < 400
        tail = recorded_stream(name)
        assert [shape(e) for e in events[-len(tail):]][-3:] == [shape(e) for e in tail][-3:]
        if usage:
            assert events[-2]["usage"]["completion_tokens"] == len(tokens) - 1
        else:
            assert "system_fingerprint" in tokens[-1]

    run(steps, token_delay=0.002)


def test_abort_ends_a_whole_answer_with_the_text_so_far_and_finish_reason_abort() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        answer = asyncio.create_task(c.post("/v1/chat/completions", json=chat(400)))
        await until(lambda: bool(sim.parts.engine.running))
        await asyncio.sleep(0.02)
        await c.post("/sleep?mode=abort")
        body = (await answer).json()
        recorded = record("abort_nonstream")["json"]
        assert shape(body) == shape(recorded) and recorded["choices"][0]["finish_reason"] == "abort"
        assert body["choices"][0]["finish_reason"] == "abort"
        produced = body["usage"]["completion_tokens"]
        assert 0 < produced < 400
        assert body["choices"][0]["message"]["content"] == "".join(shapes.word(i) for i in range(produced))
        page = (await c.get("/metrics")).text
        assert 'vllm:request_success_total{engine="0",finished_reason="abort",model_name="tiny-chat"} 1.0' in page

    run(steps, token_delay=0.002)


def test_abort_also_ends_requests_that_were_queued() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        await c.post("/sleep?level=0")
        stream = asyncio.create_task(c.post("/v1/chat/completions", json=chat(5, stream=True, usage=True)))
        whole = asyncio.create_task(c.post("/v1/chat/completions", json=chat(5)))
        await until(lambda: len(sim.parts.engine.waiting) == 2)
        assert (await c.post("/sleep?level=0&mode=abort")).json() == {"status": "sleeping", "level": 0}
        events = payloads((await stream).text)
        assert [shape(e) for e in events] == [shape(e) for e in recorded_stream("abort_queued_stream")]
        assert events[1]["usage"]["completion_tokens"] == 0
        body = (await whole).json()
        assert body["choices"][0]["finish_reason"] == "abort" and body["choices"][0]["message"]["content"] == ""
        assert record("abort_queued_nonstream")["body"].count('"finish_reason":"abort"') == 1

    run(steps)


def test_wait_lets_running_requests_finish_before_sleeping_and_keeps_new_ones_queued() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        running = asyncio.create_task(c.post("/v1/chat/completions", json=chat(40, stream=True)))
        await until(lambda: bool(sim.parts.engine.running))
        sleeping = asyncio.create_task(c.post("/sleep?mode=wait"))
        await until(lambda: sim.parts.engine.paused)
        late = asyncio.create_task(c.post("/v1/chat/completions", json=chat()))
        answer = await sleeping
        assert answer.json() == {"status": "sleeping", "level": 1}
        assert not sim.parts.engine.running  # drained before the answer, as recorded ("wait_stream")
        assert payloads((await running).text)[-2]["choices"][0]["finish_reason"] == "length"
        assert not late.done()
        await c.post("/wake_up")
        assert (await late).status_code == 200

    run(steps, token_delay=0.005)
    assert record("wait_stream")["last_event_before_sleep_answer"] is True


def test_keep_freezes_running_requests_and_they_go_on_after_the_wake() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        stream = asyncio.create_task(c.post("/v1/chat/completions", json=chat(30, stream=True)))
        await until(lambda: first_token_out(sim))
        assert (await c.post("/sleep?mode=keep")).json() == {"status": "sleeping", "level": 1}
        await asyncio.sleep(0.5)  # far longer than the 30 tokens need
        assert not stream.done() and len(sim.parts.engine.running) == 1
        await c.post("/wake_up")
        events = payloads((await stream).text)
        tokens = [e for e in events[1:-1]]
        assert len(tokens) == 30 and tokens[-1]["choices"][0]["finish_reason"] == "length"

    run(steps, token_delay=0.005)


def test_level_0_pauses_only_and_a_scheduling_wake_resumes_it() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        await c.post("/sleep?level=0")
        queued = asyncio.create_task(c.post("/v1/chat/completions", json=chat()))
        await until(lambda: len(sim.parts.engine.waiting) == 1)
        assert (await c.post("/wake_up?tags=scheduling")).json() == {"status": "awake", "tags": ["scheduling"]}
        assert (await queued).status_code == 200
        assert sim.state.awake_intervals[0][1] is None  # a pause frees no memory

    run(steps, enable_sleep_mode=True)


def test_after_level_2_the_weights_are_garbage_until_reloaded() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        good = (await c.post("/v1/chat/completions", json=chat(4))).json()["choices"][0]["message"]["content"]
        await c.post("/sleep?level=2")
        assert (await c.post("/wake_up?tags=weights")).json()["status"] == "sleeping"
        assert (await c.post("/wake_up?tags=kv_cache")).json()["status"] == "awake"  # reload skipped
        garbage = (await c.post("/v1/chat/completions", json=chat(4))).json()["choices"][0]["message"]["content"]
        assert garbage != good and "\ufffd" in garbage
        await c.post("/sleep?level=2")
        await c.post("/wake_up?tags=weights")
        assert (await c.post("/collective_rpc", json={"method": "reload_weights"})).json() == {"results": [None]}
        await c.post("/wake_up?tags=kv_cache")
        assert (await c.post("/reset_prefix_cache")).json() == {"success": True}
        again = (await c.post("/v1/chat/completions", json=chat(4))).json()["choices"][0]["message"]["content"]
        assert again == good

    run(steps, enable_sleep_mode=True)


def test_reloading_while_the_weights_still_sleep_fails_and_leaves_them_garbage() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        await c.post("/sleep?level=2")
        answer = await c.post("/collective_rpc", json={"method": "reload_weights"})
        assert answer.status_code == 500 and answer.json()["error"]["type"] == "InternalServerError"
        await c.post("/wake_up")
        text = (await c.post("/v1/chat/completions", json=chat(2))).json()["choices"][0]["message"]["content"]
        assert "\ufffd" in text

    run(steps, enable_sleep_mode=True)


def test_without_enable_sleep_mode_a_sleep_frees_nothing_and_level_2_loses_nothing() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        await c.post("/sleep?level=2")
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
        await c.post("/wake_up")
        text = (await c.post("/v1/chat/completions", json=chat(3))).json()["choices"][0]["message"]["content"]
        assert text == "".join(shapes.word(i) for i in range(3))
        stats = (await c.get("/_sim/stats")).json()
        assert stats["sleeps"] == 1 and stats["wakes"] == 1
        assert len(stats["awake_intervals"]) == 1 and stats["awake_intervals"][0][1] is None

    run(steps)


def test_the_awake_record_shows_when_memory_was_held() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        before = time.time()
        await c.post("/sleep")
        await c.post("/wake_up?tags=weights")  # memory is taken from the first tag on
        await c.post("/wake_up?tags=kv_cache")
        await c.post("/sleep?level=2")
        stats = (await c.get("/_sim/stats")).json()
        (first_start, first_end), (second_start, second_end) = stats["awake_intervals"]
        assert first_start <= before <= first_end <= second_start <= second_end <= time.time()
        assert stats["sleeps"] == 2 and stats["wakes"] == 1

    run(steps, enable_sleep_mode=True)


def test_the_delays_hold_the_sleep_and_wake_answers_and_it_stays_asleep_meanwhile() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        started = time.monotonic()
        await c.post("/sleep")
        assert time.monotonic() - started >= 0.2
        started = time.monotonic()
        waking = asyncio.create_task(c.post("/wake_up"))
        await until(lambda: bool(sim.state.awake_intervals[-1][1] is None))  # the wake has begun
        assert (await c.get("/is_sleeping")).json() == {"is_sleeping": True}
        assert (await waking).json()["status"] == "awake"
        assert time.monotonic() - started >= 0.3

    run(steps, enable_sleep_mode=True, sleep_delay=0.2, wake_delay=0.3)


def test_an_embedding_model_queues_while_asleep_and_level_2_garbage_moves_its_vectors() -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        good = (await c.post("/v1/embeddings", json={"input": "hello"})).json()["data"][0]["embedding"]
        await c.post("/sleep?level=2")
        queued = asyncio.create_task(c.post("/v1/embeddings", json={"input": "hello"}))
        await until(lambda: len(sim.parts.engine.waiting) == 1)
        await c.post("/wake_up")
        garbage = (await queued).json()["data"][0]["embedding"]
        assert garbage != good
        await c.post("/collective_rpc", json={"method": "reload_weights"})
        assert (await c.post("/v1/embeddings", json={"input": "hello"})).json()["data"][0]["embedding"] == good

    run(steps, kind=EMBEDDING, enable_sleep_mode=True)
