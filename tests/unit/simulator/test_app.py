"""`app.py`: routing as `vllm serve` registers it, the API key, and the plain routes."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from vllm_gateway.simulator import Simulator, SimulatorConfig

from .replay import CHAT_SIM, EMBED_SIM, exactly_as_captured

CAPTURED = [
    ("chat_on_embed_server.txt", EMBED_SIM),
    ("embeddings_on_chat_server.txt", CHAT_SIM),
    ("err_404_path.txt", CHAT_SIM),
    ("version.txt", CHAT_SIM),
    ("load.txt", CHAT_SIM),
    ("health.txt", CHAT_SIM),
    ("ping.txt", CHAT_SIM),
]


@pytest.mark.parametrize(("name", "config"), CAPTURED, ids=[n for n, _ in CAPTURED])
def test_plain_routes_and_unregistered_ones_answer_like_vllm_byte_for_byte(name: str, config: dict) -> None:
    exactly_as_captured(name, **config)


def test_api_key_guards_v1_routes_like_vllm() -> None:
    sim = Simulator(SimulatorConfig(models=["tiny-chat-auth"], api_key="secret"))

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
            body = {"model": "tiny-chat-auth", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
            return [
                await client.post("/v1/chat/completions", json=body),
                await client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer wrong"}),
                await client.get("/v1/models", headers={"x-api-key": "secret"}),
                await client.post("/v1/chat/completions", json=body, headers={"authorization": "Bearer secret"}),
                await client.post("/tokenize", json={"model": "tiny-chat-auth", "prompt": "hi"}),
                await client.get("/health"),
            ]

    no_key, wrong, x_api_key, ok, tokenize, health = asyncio.run(calls())
    for refused in (no_key, wrong, x_api_key):
        assert refused.status_code == 401 and refused.text == '{"error":"Unauthorized"}'
    assert ok.status_code == 200 and tokenize.status_code == 200 and health.status_code == 200


def test_a_simulator_needs_a_model() -> None:
    with pytest.raises(ValueError):
        Simulator(SimulatorConfig(models=[]))
