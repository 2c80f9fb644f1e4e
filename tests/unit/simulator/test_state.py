"""`state.py`: the `/_sim/*` controls."""

from __future__ import annotations

import asyncio

import httpx
from vllm_gateway.simulator import Simulator, SimulatorConfig

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
