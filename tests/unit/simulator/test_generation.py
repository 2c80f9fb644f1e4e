"""`generation.py`: chat and completions bodies, streams and errors as vLLM 0.32.0 sends them."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from vllm_gateway.simulator import Simulator, SimulatorConfig, shapes

from .replay import (
    CHAT_SIM,
    Sample,
    events,
    exactly_as_captured,
    replay,
    send,
    shape,
    shaped_as_captured,
)

CAPTURED_ERRORS = ["err_max_tokens_too_large.txt", "err_max_tokens_too_large_chat.txt",
                   "err_max_tokens_too_large_stream.txt", "err_missing_messages.txt", "err_missing_prompt.txt",
                   "err_unknown_model.txt", "err_unknown_model_completions.txt"]


@pytest.mark.parametrize("name", CAPTURED_ERRORS)
def test_errors_match_vllm_byte_for_byte(name: str) -> None:
    exactly_as_captured(name, **CHAT_SIM)


@pytest.mark.parametrize("name", ["chat.txt", "err_missing_model.txt", "completions.txt"])
def test_answers_have_vllm_fields(name: str) -> None:
    shaped_as_captured(name, **CHAT_SIM)


@pytest.mark.parametrize("name", ["chat_stream.txt", "completions_stream.txt", "completions_stream_nousage.txt"])
def test_streams_have_vllm_framing_and_fields(name: str) -> None:
    sample, response = replay(name, **CHAT_SIM)
    assert response.status_code == 200
    assert response.headers["content-type"] == sample.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.text.endswith("data: [DONE]\n\n")
    got, expected = events(response.text), sample.events()
    assert len(got) == len(expected)
    assert [shape(e) for e in got] == [shape(e) for e in expected]


def test_usage_chunk_is_last_before_done_and_counts_tokens() -> None:
    sim = Simulator(SimulatorConfig(**CHAT_SIM))
    sample = Sample.request("POST", "/v1/chat/completions", {
        "model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True,
        "stream_options": {"include_usage": True}})
    got = events(asyncio.run(send(sim, sample)).text)
    assert got[-1] == "[DONE]"
    usage = got[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert all("usage" not in e for e in got[:-2])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in got[:-2]) == "".join(shapes.word(i) for i in range(5))


def test_records_requests_and_faults() -> None:
    sim = Simulator(SimulatorConfig(**CHAT_SIM))
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
            return [await client.post("/v1/chat/completions", json=body, headers={"x-sim-fault": f, "x-request-id": f})
                    for f in ("status_500", "status_503", "garbage_json", "none")]

    s500, s503, garbage, ok = asyncio.run(calls())
    assert s500.status_code == 500 and s500.json()["error"]["code"] == 500
    assert s503.status_code == 503 and s503.json()["error"]["code"] == 503
    assert garbage.status_code == 200 and garbage.headers["content-type"] == "application/json"
    with pytest.raises(orjson.JSONDecodeError):
        orjson.loads(garbage.content)
    assert ok.status_code == 200 and ok.json()["id"] == "chatcmpl-none"
    stats = sim.state.stats()
    assert stats["received"] == 4 and stats["completed"] == 1 and stats["running"] == 0
    assert [r["headers"]["x-sim-fault"] for r in stats["requests"]] == ["status_500", "status_503", "garbage_json", "none"]
    assert stats["requests"][0]["body"] == body and stats["requests"][0]["path"] == "/v1/chat/completions"
