"""The live feed: one event per tick for every page alike, slow pages dropped, nothing scraped
for nobody, every stream ended at shutdown."""

from __future__ import annotations

import asyncio

import httpx
import orjson
import pytest

from vllm_gateway.gateway import create_app
from vllm_gateway.settings import Settings

pytestmark = pytest.mark.anyio
GENERATION = ('# TYPE vllm:generation_tokens_total counter\n'
              'vllm:generation_tokens_total{engine="0",model_name="m"} %d\n')


def gateway(calls: list[str]):
    tokens = [0]

    def backend(request: httpx.Request) -> httpx.Response:
        calls.append(request.url.path)
        if request.url.path == "/metrics":
            tokens[0] += 100
            return httpx.Response(200, text=GENERATION % tokens[0])
        if request.url.path == "/v1/models":
            return httpx.Response(200, json={"object": "list", "data": [{"id": "m", "object": "model"}]})
        return httpx.Response(200, json={"status": "ok"})

    settings = Settings(backends=[{"name": "chat", "url": "http://chat:8000"}])
    return create_app(settings, transport=httpx.MockTransport(backend))


def parse(event: bytes) -> tuple[str, dict]:
    lines = dict(line.split(": ", 1) for line in event.decode().strip().split("\n") if ": " in line)
    return lines["event"], orjson.loads(lines["data"])


async def test_every_page_gets_the_same_bytes_each_tick_and_nothing_is_scraped_for_nobody() -> None:
    calls: list[str] = []
    app = gateway(calls)
    app.state.metrics_page.cache_seconds = 0  # each tick a new scrape (ticks are a second apart in life)
    feed = app.state.live_feed
    feed.tick()
    await asyncio.sleep(0.05)
    assert "/metrics" not in calls  # no page open: the backends are not asked
    assert feed.timeline.export(0)["backends"]["chat"]["runs"]  # but the timeline was sampled

    pages = [feed.stream("admin", True), feed.stream("view")]
    hellos = [await page.__anext__() for page in pages]
    kinds = [parse(h[h.index(b"event:"):]) for h in hellos]
    assert [k[0] for k in kinds] == ["hello", "hello"]
    assert kinds[0][1]["role"] == "admin" and kinds[0][1]["signed_in"] and kinds[1][1]["role"] == "view"
    assert kinds[0][1]["status"]["schema_version"] == 1 and kinds[0][1]["config"]["chat"]["url"] == "http://chat:8000"

    feed.tick()
    first, second = [await page.__anext__() for page in pages]
    assert first is second  # encoded once, whatever the number of pages
    kind, data = parse(first)
    assert kind == "tick" and data["status"]["backends"][0]["name"] == "chat"
    await asyncio.sleep(0.05)
    assert calls.count("/metrics") == 1  # one shared scrape for both pages
    feed.tick()
    for page in pages:
        await page.__anext__()
    await asyncio.sleep(0.05)
    feed.tick()
    _, data = parse(await pages[0].__anext__())
    assert data["status"]["backends"][0]["engine"]["generation_tokens_per_s"] > 0
    feed.close()
    for page in pages:
        with pytest.raises(StopAsyncIteration):
            while True:
                await page.__anext__()
    assert not feed.subscribers
    late = feed.stream("view")  # a page that connects while the gateway shuts down gets one snapshot, then the end
    assert b"event: hello" in await late.__anext__()
    with pytest.raises(StopAsyncIteration):
        await late.__anext__()


async def test_a_page_that_does_not_read_is_dropped_and_its_stream_ends() -> None:
    app = gateway([])
    feed = app.state.live_feed
    slow = feed.stream("view")
    await slow.__anext__()  # connected, then never reads
    for _ in range(20):
        feed.tick()
    assert not feed.subscribers
    with pytest.raises(StopAsyncIteration):
        await slow.__anext__()


async def test_new_activity_and_log_lines_go_out_once() -> None:
    app = gateway([])
    feed = app.state.live_feed
    page = feed.stream("view")
    await page.__anext__()
    feed.activity.refused("m", "chat", "/v1/chat/completions", 503, b"r1", 0.0)
    feed.logs.backend_output("chat", ["loaded"])
    feed.tick()
    _, data = parse(await page.__anext__())
    assert [r["request_id"] for r in data["activity"]] == ["r1"] and [line["text"] for line in data["logs"]] == ["loaded"]
    feed.tick()
    _, data = parse(await page.__anext__())
    assert data["activity"] == [] and data["logs"] == []
    feed.close()


async def test_the_configuration_shown_leaves_secrets_out() -> None:
    settings = Settings(backends=[{"name": "chat", "url": "http://chat:8000", "api_key": "sk-secret",
                                   "launch": {"model": "m", "env": {"HF_TOKEN": "hf_secret"}}}])
    app = create_app(settings, transport=httpx.MockTransport(lambda r: httpx.Response(200)))
    hello = app.state.live_feed.hello("admin")
    assert b"sk-secret" not in hello and b"hf_secret" not in hello and b'"HF_TOKEN":"(set)"' in hello
