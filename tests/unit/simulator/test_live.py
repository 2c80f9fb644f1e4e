"""A real uvicorn simulator and the official `openai` SDK: what a client of a sleeping or LoRA-serving
vLLM sees on the wire (a stream's head while asleep, an abort mid-stream, adapters by name)."""

from __future__ import annotations

import concurrent.futures
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI
from openai.types.chat import ChatCompletionMessageParam

from tests.servers import running, simulator, wait_for
from vllm_gateway.simulator import shapes, write_adapter

MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hi"}]


def test_a_stream_opened_while_asleep_gets_its_head_and_its_tokens_after_the_wake() -> None:
    sim = simulator(["tiny-chat"], dev_mode=True, enable_sleep_mode=True)
    with running(sim) as server, OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=30) as client, \
            concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert httpx.post(f"{server.url}/sleep").json() == {"status": "sleeping", "level": 1}
        stream = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=3, stream=True)
        first = pool.submit(next, iter(stream))  # the 200 and its SSE head are in: vLLM sends them at once
        whole = pool.submit(client.chat.completions.create, model="tiny-chat", messages=MESSAGES, max_tokens=3)
        assert wait_for(lambda: len(sim.parts.engine.waiting) == 2)
        assert not first.done() and not whole.done()
        assert httpx.get(f"{server.url}/health").status_code == 200
        assert httpx.post(f"{server.url}/wake_up").json() == {"status": "awake", "tags": None}
        assert first.result(10).choices[0].delta.role == "assistant"
        assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == " the model gateway"
        assert whole.result(10).choices[0].message.content == " the model gateway"


def test_an_abort_ends_the_sdks_stream_with_finish_reason_abort() -> None:
    sim = simulator(["tiny-chat"], dev_mode=True, token_delay=0.01)
    with running(sim) as server, OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=30) as client:
        stream = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=400, stream=True)
        chunks = [next(stream) for _ in range(4)]
        assert httpx.post(f"{server.url}/sleep?mode=abort").json() == {"status": "sleeping", "level": 1}
        chunks += list(stream)
        assert chunks[-1].choices[0].finish_reason == "abort" and chunks[-1].choices[0].delta.content == ""
        assert len(chunks) < 400
        httpx.post(f"{server.url}/wake_up")
        reply = client.chat.completions.create(model="tiny-chat", messages=MESSAGES, max_tokens=2)
        assert reply.choices[0].finish_reason == "length"


def test_adapters_loaded_at_run_time_are_listed_served_by_name_and_gone_once_unloaded(tmp_path: Path) -> None:
    sim = simulator(["base"], runtime_lora_updating=True, enable_lora=True, max_loras=2)
    folder = write_adapter(tmp_path / "sql-lora", rank=8, base_model="org/base")
    with running(sim) as server, OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0, timeout=30) as client:
        loaded = httpx.post(f"{server.url}/v1/load_lora_adapter", json={"lora_name": "sql", "lora_path": str(folder)})
        assert (loaded.status_code, loaded.text) == (200, "Success: LoRA adapter 'sql' added successfully.")
        cards = {m.id: m for m in client.models.list()}
        assert list(cards) == ["base", "sql"]
        assert (cards["sql"].model_extra or {})["parent"] == "base" and (cards["sql"].model_extra or {})["root"] == str(folder)
        reply = client.chat.completions.create(model="sql", messages=MESSAGES, max_tokens=5)
        assert reply.model == "sql" and reply.choices[0].message.content == shapes.text(shapes.vocabulary("sql"), 5)
        base = client.chat.completions.create(model="base", messages=MESSAGES, max_tokens=5)
        assert base.choices[0].message.content != reply.choices[0].message.content
        assert httpx.post(f"{server.url}/v1/unload_lora_adapter", json={"lora_name": "sql"}).status_code == 200
        with pytest.raises(openai.NotFoundError) as caught:
            client.chat.completions.create(model="sql", messages=MESSAGES, max_tokens=5)
        assert caught.value.body["message"] == "The model `sql` does not exist. Valid aliases: base."  # type: ignore[index]
        stats = httpx.get(f"{server.url}/_sim/stats").json()
        assert [(r["name"], r["status"]) for r in stats["lora_loads"]] == [("sql", 200)]
        assert [r["name"] for r in stats["lora_unloads"]] == ["sql"]


def test_a_client_that_gives_up_on_a_queued_request_leaves_the_engines_queue() -> None:
    sim = simulator(["tiny-chat"], dev_mode=True)
    with running(sim) as server:
        httpx.post(f"{server.url}/sleep")
        body = {"model": "tiny-chat", "messages": MESSAGES, "max_tokens": 3, "stream": True}
        with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=30) as response:
            assert response.status_code == 200 and wait_for(lambda: len(sim.parts.engine.waiting) == 1)
        assert wait_for(lambda: not sim.parts.engine.jobs and sim.state.disconnects == 1)
        with pytest.raises(httpx.ReadTimeout):
            httpx.post(f"{server.url}/v1/chat/completions", json={**body, "stream": False}, timeout=0.3)
        assert wait_for(lambda: not sim.parts.engine.jobs and sim.state.disconnects == 2)
        assert httpx.post(f"{server.url}/wake_up").json()["status"] == "awake"
        assert sim.state.completed == 0
