"""max_concurrency: requests over the limit queue in order, past the queue they get 429."""

from __future__ import annotations

import asyncio

import httpx

from tests.servers import CHAT, gateway, running, simulator

BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10}


def test_over_the_limit_queue_then_429():
    with running(simulator(["sim-chat"], CHAT, token_delay=0.03)) as sim, gateway(
        {"name": "chat", "url": sim.url, "max_concurrency": 2, "max_queue": 2, "queue_timeout": 10},
    ) as gw:
        async def burst():
            async with httpx.AsyncClient(base_url=gw.url, timeout=20) as client:
                return await asyncio.gather(*(client.post("/v1/chat/completions", json=BODY) for _ in range(6)))

        responses = asyncio.run(burst())
        statuses = sorted(r.status_code for r in responses)
        assert statuses == [200, 200, 200, 200, 429, 429]
        rejected = [r for r in responses if r.status_code == 429]
        assert all(r.headers["retry-after"] == "1" and r.json()["error"]["code"] == "rate_limit_exceeded" for r in rejected)
        assert sim.app.state.received == 4
        limits = httpx.get(f"{gw.url}/status").json()["backends"][0]["limits"]
        assert limits == {"max_concurrency": 2, "active": 0, "waiting": 0, "max_queue": 2, "rejected": 2}
