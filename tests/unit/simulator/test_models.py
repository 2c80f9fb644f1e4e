"""`models.py`: `/v1/models` and which name a request is served under."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from vllm_gateway.simulator import Simulator, SimulatorConfig

from .replay import CHAT_SIM, EMBED_SIM, shaped_as_captured


@pytest.mark.parametrize(("name", "config"), [("models_chat.txt", CHAT_SIM), ("models_embed.txt", EMBED_SIM)])
def test_model_list_has_vllm_fields(name: str, config: dict) -> None:
    shaped_as_captured(name, **config)


def test_lora_adapters_and_served_names_are_listed_and_served() -> None:
    sim = Simulator(SimulatorConfig(models=["base", "base-alias"], lora_adapters=["sql-lora"], root="org/base"))

    async def calls() -> tuple[httpx.Response, httpx.Response, httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
            body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1}
            return (await client.get("/v1/models"),
                    await client.post("/v1/chat/completions", json={**body, "model": "sql-lora"}),
                    await client.post("/v1/chat/completions", json={**body, "model": "base-alias"}))

    models, lora, alias = asyncio.run(calls())
    cards = {c["id"]: c for c in models.json()["data"]}
    assert list(cards) == ["base", "base-alias", "sql-lora"]
    assert cards["base"]["root"] == cards["base-alias"]["root"] == "org/base" and cards["base"]["parent"] is None
    assert cards["sql-lora"]["parent"] == "base" and cards["sql-lora"]["root"] == "/adapters/sql-lora"
    assert lora.json()["model"] == "sql-lora"
    assert alias.json()["model"] == "base"  # vLLM answers with the first served name
