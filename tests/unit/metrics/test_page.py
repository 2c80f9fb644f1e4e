"""`metrics.page`: scraping the backends (their own clients, concurrently, bounded) and the page.

Backends are `httpx.MockTransport` handlers handed to the registry's clients, so a page built
with any other client would reach no backend at all.
"""

from __future__ import annotations

import asyncio
from collections import Counter as Tally

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.promtool import promtool_findings
from vllm_gateway.metrics import GatewayMetrics
from vllm_gateway.metrics.page import CONTENT_TYPE, MetricsPage, _replica
from vllm_gateway.routing.registry import Registry
from vllm_gateway.settings import Settings


def vllm_text(model: str, tokens: int) -> str:
    return (
        "# HELP python_info Python platform information\n# TYPE python_info gauge\n"
        'python_info{implementation="CPython"} 1.0\n'
        "# HELP vllm:prompt_tokens_total Number of prefill tokens processed.\n"
        "# TYPE vllm:prompt_tokens_total counter\n"
        f'vllm:prompt_tokens_total{{engine="0",model_name="{model}"}} {tokens}.0\n'
    )


class Backends:
    """A fake network: host -> behaviour ("ok", "hang", "500"), with a tally of requests."""

    def __init__(self, behaviours: dict[str, str]) -> None:
        self.behaviours = behaviours
        self.calls: Tally[str] = Tally()
        self.accept: list[str] = []
        self.never = asyncio.Event()

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        host = request.url.netloc.decode()
        self.calls[host] += 1
        self.accept.append(request.headers.get("accept", ""))
        behaviour = self.behaviours[host]
        if behaviour == "hang":
            await self.never.wait()
        if behaviour == "500":
            return httpx.Response(500, text="boom")
        await asyncio.sleep(0.01)  # long enough for concurrent renders to overlap
        return httpx.Response(200, text=vllm_text(f"model-{host}", len(host)))


def make_page(backends: Backends, configs: list[dict], **options) -> tuple[MetricsPage, Registry, GatewayMetrics]:
    settings = Settings(backends=configs, metrics_scrape_timeout=options.pop("timeout", 0.2))
    registry = Registry(settings, httpx.MockTransport(backends))
    metrics = GatewayMetrics()
    metrics.declare_backends(list(registry.backends))
    return MetricsPage(registry, metrics, settings.metrics_scrape_timeout, **options), registry, metrics


def parse(page: bytes) -> dict[str, list]:
    parsed = list(text_string_to_metric_families(page.decode()))
    names = [f.name for f in parsed]
    assert len(names) == len(set(names))
    return {f.name: f.samples for f in parsed}


def value(samples: list, **labels: str) -> float:
    (match,) = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    return match


@pytest.mark.anyio
async def test_page_has_gateway_families_then_every_backends_vllm_families():
    backends = Backends({"a:1": "ok", "b:2": "ok"})
    page, registry, metrics = make_page(backends, [{"name": "a", "url": "http://a:1"}, {"name": "b", "url": "http://b:2"}])
    registry.backends["a"].health.passed(0)  # what the health monitor writes
    metrics.for_request("model-a:1", "a", "/v1/chat/completions").count(200)
    body, content_type = await page.render()
    assert content_type == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    text = body.decode()
    assert text.index("gateway_requests_total") < text.index("vllm:prompt_tokens_total")
    families = parse(body)
    tokens = families["vllm:prompt_tokens"]
    assert value(tokens, backend="a", model_name="model-a:1") == 3
    assert value(tokens, backend="b", model_name="model-b:2") == 3
    assert "python_info" not in text
    assert value(families["gateway_backend_up"], backend="a") == 1
    assert value(families["gateway_backend_up"], backend="b") == 0  # unknown yet: not ready
    assert value(families["gateway_backend_scrape_errors"], backend="a") == 0
    assert all(a.startswith("text/plain;version=0.0.4") for a in backends.accept)
    await registry.aclose()


@pytest.mark.anyio
async def test_a_hanging_or_failing_backend_is_absent_and_counted_the_page_still_comes():
    backends = Backends({"good:1": "ok", "hang:2": "hang", "bad:3": "500"})
    page, registry, _ = make_page(backends, [
        {"name": "good", "url": "http://good:1"}, {"name": "hang", "url": "http://hang:2"}, {"name": "bad", "url": "http://bad:3"},
    ], timeout=0.2, cache_seconds=0)
    # The guard only bounds the test; the scrape timeout (0.2 s) is what ends the hanging scrape.
    body, _ = await asyncio.wait_for(page.render(), 20)
    families = parse(body)
    assert {s.labels["backend"] for s in families["vllm:prompt_tokens"]} == {"good"}
    errors = families["gateway_backend_scrape_errors"]
    assert (value(errors, backend="good"), value(errors, backend="hang"), value(errors, backend="bad")) == (0, 1, 1)
    body, _ = await asyncio.wait_for(page.render(), 20)
    errors = parse(body)["gateway_backend_scrape_errors"]
    assert (value(errors, backend="hang"), value(errors, backend="bad")) == (2, 2)
    await registry.aclose()


@pytest.mark.anyio
async def test_a_backend_known_down_is_not_asked():
    backends = Backends({"up:1": "ok", "down:2": "ok"})
    page, registry, _ = make_page(backends, [{"name": "up", "url": "http://up:1"}, {"name": "down", "url": "http://down:2"}])
    registry.backends["down"].health.failed(0, "health check answered 503")
    families = parse((await page.render())[0])
    assert backends.calls == {"up:1": 1}
    assert {s.labels["backend"] for s in families["vllm:prompt_tokens"]} == {"up"}
    assert value(families["gateway_backend_up"], backend="down") == 0
    await registry.aclose()


@pytest.mark.anyio
async def test_concurrent_renders_share_one_scrape_and_the_cache_serves_the_next():
    backends = Backends({"a:1": "ok", "b:2": "ok"})
    page, registry, _ = make_page(backends, [{"name": "a", "url": "http://a:1"}, {"name": "b", "url": "http://b:2"}],
                                  cache_seconds=60)
    bodies = await asyncio.gather(*(page.render() for _ in range(5)))
    assert backends.calls == {"a:1": 1, "b:2": 1}
    await page.render()
    assert backends.calls == {"a:1": 1, "b:2": 1}
    assert len({b for b, _ in bodies}) == 1
    page.cache_seconds = 0
    page._fresh_until = 0
    await page.render()
    await page.render()
    assert backends.calls == {"a:1": 3, "b:2": 3}
    await registry.aclose()


@pytest.mark.anyio
async def test_a_cancelled_render_does_not_cancel_the_shared_scrape():
    backends = Backends({"a:1": "ok"})
    page, registry, _ = make_page(backends, [{"name": "a", "url": "http://a:1"}], cache_seconds=60)
    first = asyncio.create_task(page.render())
    await asyncio.sleep(0)
    second = asyncio.create_task(page.render())
    await asyncio.sleep(0)
    first.cancel()
    body, _ = await asyncio.wait_for(second, 20)
    assert "vllm:prompt_tokens_total" in body.decode()
    assert backends.calls == {"a:1": 1}
    await registry.aclose()


@pytest.mark.anyio
async def test_each_replica_of_a_backend_is_scraped_and_labelled():
    backends = Backends({"r1:8000": "ok", "r2:8000": "ok", "r3:8000": "ok", "solo:9": "ok"})
    page, registry, _ = make_page(backends, [
        {"name": "pool", "urls": ["http://r1:8000", "http://r2:8000", "http://r3:8000"]},
        {"name": "solo", "url": "http://solo:9"},
    ])
    registry.backends["pool"].upstreams[2].healthy = False  # the health checker says so: skipped
    tokens = parse((await page.render())[0])["vllm:prompt_tokens"]
    assert sorted((s.labels["backend"], s.labels.get("replica")) for s in tokens) == [
        ("pool", "r1:8000"), ("pool", "r2:8000"), ("solo", None),
    ]
    assert backends.calls["r3:8000"] == 0
    await registry.aclose()


def test_replica_names():
    assert _replica("http://10.0.0.5:8000") == "10.0.0.5:8000"
    assert _replica("https://vllm.internal") == "vllm.internal:443"
    assert _replica("http://[::1]:8001") == "[::1]:8001"
    assert _replica("http://h:1/prefix") == "h:1/prefix"


def test_the_gateways_own_families_have_no_promtool_finding_at_all():
    metrics = GatewayMetrics()
    metrics.declare_backends(["chat", "embed"])
    recorder = metrics.for_request("m", "chat", "/v1/chat/completions")
    recorder.count(200)
    recorder.count(502)
    recorder.duration.observe(0.3)
    recorder.ttfb.observe(0.05)
    recorder.in_flight.inc()
    recorder.disconnects.inc()
    metrics.upstream_error("chat", "connect")
    metrics.backend_restarts.labels("chat").inc()
    metrics.scrape_error("embed")
    text = metrics.exposition().decode()
    assert promtool_findings(text) == set()
    parsed = parse(text.encode())
    assert set(parsed) == {
        "gateway_requests", "gateway_request_duration_seconds", "gateway_time_to_first_byte_seconds",
        "gateway_requests_in_flight", "gateway_upstream_errors", "gateway_backend_up", "gateway_backend_restarts",
        "gateway_client_disconnects", "gateway_backend_scrape_errors",
    }
    assert "_created" not in text
    assert value(parsed["gateway_requests"], model="m", backend="chat", endpoint="/v1/chat/completions", status="502") == 1
    buckets = [s.labels["le"] for s in parsed["gateway_request_duration_seconds"] if s.name.endswith("_bucket")]
    assert buckets[0] == "0.005" and float(buckets[-2]) >= 300  # 5 ms to several minutes


@pytest.fixture(autouse=True)
def _no_multiprocess_env(monkeypatch):
    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)
