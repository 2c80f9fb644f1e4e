"""The simulator answers like a real vLLM server: the captures in `shared/reference/vllm-samples/`
(taken from vLLM 0.32.0) are replayed against it and the shapes compared.

Bodies whose values are deterministic (errors) must match byte for byte; generated ones (ids,
timestamps, text, vectors) must have the same fields in the same order, recursively.
"""

from __future__ import annotations

import asyncio
import base64
import re
import struct
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from vllm_gateway.simulator import CHAT, EMBEDDING, Simulator, SimulatorConfig
from vllm_gateway.simulator import shapes

SAMPLES = Path(__file__).resolve().parents[1] / "fixtures" / "vllm-samples"


class Sample:
    """One capture: request line, body, and the raw response (status, headers, body)."""

    def __init__(self, name: str) -> None:
        with open(SAMPLES / name, encoding="utf-8", newline="") as file:  # keep the CRLFs of the HTTP head
            text = file.read()
        request = re.search(r"^### REQUEST: (\w+) http://[^/]+(\S+)", text, re.M)
        self.method, self.path = request.group(1), request.group(2)
        body = re.search(r"^### BODY: (.*)$", text, re.M)
        extra = re.search(r"^### EXTRA CURL ARGS: -H Content-Type: (\S+) --data-binary (.*)$", text, re.M)
        self.content_type = extra.group(1) if extra else "application/json"
        self.body = (extra.group(2) if extra else body.group(1) if body else "").encode()
        raw = text.split("### RESPONSE (raw, curl -i):\n", 1)[1].rsplit("\n### time_total", 1)[0]
        head, _, self.response = raw.partition("\r\n\r\n")
        lines = head.split("\r\n")
        self.status = int(lines[0].split()[1])
        self.headers = dict(line.split(": ", 1) for line in lines[1:])

    def json(self) -> Any:
        return orjson.loads(self.response)

    def events(self) -> list[Any]:
        return [orjson.loads(e[6:]) if e != "data: [DONE]" else "[DONE]"
                for e in self.response.strip().split("\n\n")]


def shape(value: Any) -> Any:
    """Field names (ordered), recursively; lists by their first element."""
    if isinstance(value, dict):
        return [(key, shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [shape(value[0])] if value else []
    return None


CHAT_SIM = dict(models=["tiny-chat"], kind=CHAT, root="MODELS/tiny-chat", max_model_len=512)
EMBED_SIM = dict(models=["tiny-embed"], kind=EMBEDDING, root="MODELS/tiny-embed", max_model_len=512, embedding_dim=384)


async def _replay(sim: Simulator, sample: Sample) -> httpx.Response:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
        return await client.request(sample.method, sample.path, content=sample.body or None,
                                    headers={"content-type": sample.content_type} if sample.body else {})


def replay(name: str, **config: Any) -> tuple[Sample, httpx.Response]:
    sample = Sample(name)
    sim = Simulator(SimulatorConfig(**config))
    return sample, asyncio.run(_replay(sim, sample))


# -- deterministic answers: byte for byte -------------------------------------------------------------

EXACT = [
    ("err_max_tokens_too_large.txt", CHAT_SIM),
    ("err_max_tokens_too_large_chat.txt", CHAT_SIM),
    ("err_max_tokens_too_large_stream.txt", CHAT_SIM),
    ("err_wrong_content_type.txt", CHAT_SIM),
    ("err_missing_messages.txt", CHAT_SIM),
    ("err_missing_prompt.txt", CHAT_SIM),
    ("err_malformed_json.txt", CHAT_SIM),
    ("err_unknown_model.txt", CHAT_SIM),
    ("err_unknown_model_completions.txt", CHAT_SIM),
    ("err_unknown_model_embed.txt", EMBED_SIM),
    ("chat_on_embed_server.txt", EMBED_SIM),
    ("embeddings_on_chat_server.txt", CHAT_SIM),
    ("err_404_path.txt", CHAT_SIM),
    ("version.txt", CHAT_SIM),
    ("load.txt", CHAT_SIM),
    ("health.txt", CHAT_SIM),
    ("ping.txt", CHAT_SIM),
]


@pytest.mark.parametrize(("name", "config"), EXACT, ids=[n for n, _ in EXACT])
def test_deterministic_answers_match_vllm_byte_for_byte(name: str, config: dict) -> None:
    sample, response = replay(name, **config)
    assert response.status_code == sample.status
    assert response.text == sample.response
    if "content-type" in sample.headers:
        assert response.headers["content-type"] == sample.headers["content-type"]


# -- generated answers: same fields in the same order ------------------------------------------------

SHAPED = [
    ("models_chat.txt", CHAT_SIM),
    ("models_embed.txt", EMBED_SIM),
    ("chat.txt", CHAT_SIM),
    ("err_missing_model.txt", CHAT_SIM),
    ("completions.txt", CHAT_SIM),
    ("embeddings.txt", EMBED_SIM),
    ("embeddings_base64.txt", EMBED_SIM),
    ("tokenize.txt", CHAT_SIM),
    ("detokenize.txt", CHAT_SIM),
]


@pytest.mark.parametrize(("name", "config"), SHAPED, ids=[n for n, _ in SHAPED])
def test_generated_answers_have_vllm_fields(name: str, config: dict) -> None:
    sample, response = replay(name, **config)
    assert response.status_code == sample.status
    assert response.headers["content-type"] == sample.headers["content-type"]
    assert shape(response.json()) == shape(sample.json())


@pytest.mark.parametrize("name", ["chat_stream.txt", "completions_stream.txt", "completions_stream_nousage.txt"])
def test_streams_have_vllm_framing_and_fields(name: str) -> None:
    sample, response = replay(name, **CHAT_SIM)
    assert response.status_code == 200
    assert response.headers["content-type"] == sample.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert response.text.endswith("data: [DONE]\n\n")
    got, expected = Sample.events(_as_sample(response.text)), sample.events()
    assert len(got) == len(expected)
    assert [shape(e) for e in got] == [shape(e) for e in expected]


def _as_sample(text: str) -> Any:
    holder = Sample.__new__(Sample)
    holder.response = text
    return holder


def test_usage_chunk_is_last_before_done_and_counts_tokens() -> None:
    sim = Simulator(SimulatorConfig(**CHAT_SIM))
    sample = _as_request("/v1/chat/completions", {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}],
                                                  "max_tokens": 5, "stream": True, "stream_options": {"include_usage": True}})
    events = Sample.events(_as_sample(asyncio.run(_replay(sim, sample)).text))
    assert events[-1] == "[DONE]"
    usage = events[-2]
    assert usage["choices"] == [] and usage["usage"]["completion_tokens"] == 5
    assert all("usage" not in e for e in events[:-2])
    assert "".join(e["choices"][0]["delta"].get("content", "") for e in events[:-2]) == "".join(shapes.word(i) for i in range(5))


def _as_request(path: str, body: dict, headers: dict | None = None) -> Sample:
    sample = Sample.__new__(Sample)
    sample.method, sample.path, sample.body, sample.content_type = "POST", path, orjson.dumps(body), "application/json"
    return sample


def test_base64_embeddings_decode_to_the_float_vector() -> None:
    sim = Simulator(SimulatorConfig(**EMBED_SIM))
    floats = asyncio.run(_replay(sim, _as_request("/v1/embeddings", {"input": "hello"}))).json()
    packed = asyncio.run(_replay(sim, _as_request("/v1/embeddings", {"input": "hello", "encoding_format": "base64"}))).json()
    vector = floats["data"][0]["embedding"]
    raw = base64.b64decode(packed["data"][0]["embedding"])
    decoded = struct.unpack(f"<{len(raw) // 4}f", raw)
    assert len(decoded) == len(vector) == 384
    assert decoded == pytest.approx(vector, rel=1e-6)


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


def test_records_requests_and_faults() -> None:
    sim = Simulator(SimulatorConfig(**CHAT_SIM))
    body = {"model": "tiny-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}

    async def calls() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim") as client:
            return [await client.post("/v1/chat/completions", json=body, headers={"x-sim-fault": fault, "x-request-id": fault})
                    for fault in ("status_500", "status_503", "garbage_json", "none")]

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


def test_metrics_page_has_vllm_names_and_labels() -> None:
    sim = Simulator(SimulatorConfig(**CHAT_SIM))
    page = asyncio.run(_replay(sim, _get("/metrics"))).text
    for family in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                   "vllm:prompt_tokens_total", "vllm:generation_tokens_total", "vllm:request_success_total",
                   "vllm:time_to_first_token_seconds_bucket", "vllm:e2e_request_latency_seconds_bucket"):
        assert re.search(rf'^{re.escape(family)}\{{.*model_name="tiny-chat"', page, re.M), family
    assert 'engine="0"' in page


def _get(path: str) -> Sample:
    sample = Sample.__new__(Sample)
    sample.method, sample.path, sample.body, sample.content_type = "GET", path, b"", ""
    return sample


def test_a_simulator_needs_a_model() -> None:
    with pytest.raises(ValueError):
        Simulator(SimulatorConfig(models=[]))


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
