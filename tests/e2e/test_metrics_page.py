"""GET /metrics on a real gateway in front of real (simulated) vLLM servers on loopback."""

from __future__ import annotations

import contextlib

import httpx
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.promtool import promtool_findings
from tests.servers import CHAT, EMBEDDING, gateway, running, simulator, wait_for


def scrape(url: str) -> str:
    response = httpx.get(f"{url}/metrics", timeout=10)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    return response.text


def families(text: str) -> dict[str, list]:
    parsed = list(text_string_to_metric_families(text))
    names = [f.name for f in parsed]
    assert len(names) == len(set(names)), "duplicate families"
    return {f.name: f.samples for f in parsed}


def one(samples: list, **labels: str) -> float:
    (value,) = [s.value for s in samples if all(s.labels.get(k) == v for k, v in labels.items())]
    return value


def drive(url: str) -> None:
    client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    client.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "hi"}], max_tokens=5)
    for _ in client.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "yo"}],
                                            max_tokens=3, stream=True):
        pass
    client.embeddings.create(model="sim-embed", input=["one", "two"])
    httpx.post(f"{url}/v1/chat/completions", json={"model": "no-such-model", "messages": []}, timeout=10)


def test_one_page_with_the_gateway_and_both_backends(two_backends):
    gw, chat, embed = two_backends
    drive(gw.url)
    text = scrape(gw.url)
    page = families(text)
    # The gateway's own families, with the labels of the contract.
    requests = page["gateway_requests"]
    assert one(requests, model="sim-chat", backend="chat", endpoint="/v1/chat/completions", status="200") == 1
    assert one(requests, model="gpt-4o-mini", backend="chat", endpoint="/v1/chat/completions", status="200") == 1
    assert one(requests, model="sim-embed", backend="embed", endpoint="/v1/embeddings", status="200") == 1
    assert one(requests, model="unknown", endpoint="/v1/chat/completions", status="404") == 1
    assert one(page["gateway_backend_up"], backend="chat") == 1
    assert one(page["gateway_backend_up"], backend="embed") == 1
    ttft = [s for s in page["gateway_time_to_first_byte_seconds"] if s.name.endswith("_count")]
    assert one(ttft, model="gpt-4o-mini", endpoint="/v1/chat/completions") == 1
    assert one(page["gateway_requests_in_flight"], model="sim-embed", backend="embed") == 0
    # Every backend family sample carries its backend; token accounting is vLLM's own.
    backend_families = {name: samples for name, samples in page.items() if name.startswith("vllm:")}
    assert backend_families
    for samples in backend_families.values():
        assert all(s.labels.get("backend") in ("chat", "embed") for s in samples)
    raw_chat = families(httpx.get(f"{chat.url}/metrics", timeout=10).text)
    own = one(raw_chat["vllm:prompt_tokens"], model_name="sim-chat")
    assert own > 0
    assert one(page["vllm:prompt_tokens"], backend="chat", model_name="sim-chat") == own
    assert one(page["vllm:generation_tokens"], backend="chat", model_name="sim-chat") == 8  # 5 + 3
    assert one(page["vllm:prompt_tokens"], backend="embed", model_name="sim-embed") > 0
    assert not any(name.startswith(("python_", "process_", "http_")) for name in page)


def test_promtool_sees_no_more_on_the_page_than_on_the_backends_own(two_backends):
    gw, chat, embed = two_backends
    drive(gw.url)
    raw = set()
    for sim in (chat, embed):
        raw |= promtool_findings(httpx.get(f"{sim.url}/metrics", timeout=10).text)
    findings = promtool_findings(scrape(gw.url))
    assert not {f for f in findings if f.startswith("gateway_")}
    assert findings <= raw, findings - raw


class HangingMetrics:
    """A simulator whose /metrics never answers (until the client gives up)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.asked = 0

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] == "http" and scope["path"] == "/metrics":
            self.asked += 1
            while (await receive())["type"] != "http.disconnect":
                pass
            return
        await self.inner(scope, receive, send)


def test_a_backend_that_hangs_or_stops_is_absent_and_the_page_still_comes():
    hanging = HangingMetrics(simulator(["sim-embed"], EMBEDDING))
    with running(simulator(["sim-chat"], CHAT)) as chat, running(hanging) as embed, contextlib.ExitStack() as stack:
        other = stack.enter_context(running(simulator(["sim-other"], CHAT)))
        with gateway({"name": "chat", "url": chat.url}, {"name": "embed", "url": embed.url},
                     {"name": "other", "url": other.url}, metrics_scrape_timeout=0.3) as gw:
            page = families(scrape(gw.url))
            assert hanging.asked == 1
            assert {s.labels["backend"] for s in page["vllm:prompt_tokens"]} == {"chat", "other"}
            assert one(page["gateway_backend_scrape_errors"], backend="embed") == 1
            assert one(page["gateway_backend_scrape_errors"], backend="chat") == 0
            assert one(page["gateway_backend_up"], backend="embed") == 1  # healthy, only its metrics are mute
            stack.close()  # `other` stops: once the health check notices, it is down and no longer asked

            def other_gone() -> bool:  # (the merged backend part is cached for half a second)
                page = families(scrape(gw.url))
                return (one(page["gateway_backend_up"], backend="other") == 0
                        and {s.labels["backend"] for s in page["vllm:prompt_tokens"]} == {"chat"})

            assert wait_for(other_gone, 10)
            OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0).chat.completions.create(
                model="sim-chat", messages=[{"role": "user", "content": "still here"}], max_tokens=2)
