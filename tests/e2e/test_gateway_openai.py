"""The gateway core end to end: the official `openai` SDK (sync and async) through a real uvicorn
gateway on loopback to simulated vLLM servers on loopback.

The simulators record every request they receive (path, headers, body), so each test checks what
the backend really got, not only what the client saw.
"""

from __future__ import annotations

import asyncio
import re
import socket
import uuid
from typing import Any

import httpx
import openai
import pytest
from openai import AsyncOpenAI, OpenAI

from tests.servers import CHAT, EMBEDDING, Running, gateway, running, simulator, wait_for
from vllm_gateway.simulator import shapes

BACKEND_KEY = "backend-secret-42"
CLIENT_KEY = "client-key-7"
MESSAGES = [{"role": "user", "content": "hi"}]
CARD_FIELDS = ("id", "object", "created", "owned_by", "root", "parent", "max_model_len")


@pytest.fixture(scope="module")
def chat_sim():
    """A chat model served under two names, with a LoRA adapter, behind vLLM's --api-key."""
    sim = simulator(["sim-chat", "sim-chat-v2"], CHAT, lora_adapters=["sql-lora"], api_key=BACKEND_KEY,
                    root="org/sim-chat", max_model_len=512)
    with running(sim) as server:
        yield server


@pytest.fixture(scope="module")
def embed_sim():
    with running(simulator(["sim-embed"], EMBEDDING, embedding_dim=64, root="org/sim-embed")) as server:
        yield server


@pytest.fixture(scope="module")
def gw(chat_sim, embed_sim):
    """chat: models learned from its /v1/models; embed: models configured."""
    with gateway(
        {"name": "chat", "url": chat_sim.url, "aliases": ["gpt-4o-mini", "whisper-1"], "api_key": BACKEND_KEY},
        {"name": "embed", "url": embed_sim.url, "models": ["sim-embed"], "aliases": ["text-embedding-3-small"]},
    ) as server:
        yield server


@pytest.fixture(scope="module")
def client(gw) -> OpenAI:
    with OpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10) as sdk:
        yield sdk


def rid() -> str:
    return f"test-{uuid.uuid4().hex[:12]}"


def received(sim: Running, request_id: str) -> list[dict[str, Any]]:
    """What the simulator recorded for one request id."""
    return [r for r in list(sim.app.state.requests) if r["headers"].get("x-request-id") == request_id]


def only(sim: Running, request_id: str) -> dict[str, Any]:
    seen = received(sim, request_id)
    assert len(seen) == 1, seen
    return seen[0]


def assert_openai_error(response: httpx.Response, status: int, code: str | None = None) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    return error


# -- the three everyday calls, sync -------------------------------------------------------------------------

def test_chat_completion(client, chat_sim) -> None:
    request_id = rid()
    reply = client.chat.completions.create(model="sim-chat", messages=MESSAGES, max_tokens=3,
                                           extra_headers={"X-Request-ID": request_id})
    assert reply.choices[0].message.content == " the model gateway"
    assert reply.model == "sim-chat" and reply.id == f"chatcmpl-{request_id}"
    assert reply.usage.completion_tokens == 3
    seen = only(chat_sim, request_id)
    assert seen["path"] == "/v1/chat/completions" and seen["body"]["model"] == "sim-chat"
    assert seen["body"]["messages"] == MESSAGES and seen["body"]["max_tokens"] == 3


def test_completion(client) -> None:
    reply = client.completions.create(model="sim-chat", prompt="hello", max_tokens=4)
    assert reply.object == "text_completion" and reply.choices[0].text == " the model gateway token"
    assert reply.choices[0].finish_reason == "length"


def test_embeddings_base64_and_float(client, embed_sim) -> None:
    packed = client.embeddings.create(model="sim-embed", input=["alpha", "beta"])  # the SDK asks for base64
    floats = client.embeddings.create(model="sim-embed", input="alpha", encoding_format="float")
    assert [len(d.embedding) for d in packed.data] == [64, 64]
    assert packed.data[0].embedding == pytest.approx(shapes.embedding("alpha", 64), rel=1e-6)
    assert floats.data[0].embedding == pytest.approx(shapes.embedding("alpha", 64), rel=1e-9)
    assert packed.model == "sim-embed" and packed.usage.prompt_tokens > 0


def test_streaming_chat_with_usage(client) -> None:
    chunks = list(client.chat.completions.create(model="sim-chat", messages=MESSAGES, max_tokens=5, stream=True,
                                                 stream_options={"include_usage": True}))
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "".join(shapes.word(i) for i in range(5))
    *body, last = chunks
    assert last.choices == [] and last.usage.completion_tokens == 5 and last.usage.total_tokens > 5
    assert all(c.usage is None for c in body)
    assert body[-1].choices[0].finish_reason == "length"


def test_streaming_completion_without_usage(client) -> None:
    chunks = list(client.completions.create(model="sim-chat", prompt="x", max_tokens=3, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == " the model gateway"
    assert all(c.usage is None for c in chunks)


def test_stream_bytes_are_the_backends_bytes(gw, chat_sim) -> None:
    """Byte-for-byte passthrough of an SSE stream (timestamps aside), content type included."""
    body = {"model": "sim-chat", "messages": MESSAGES, "max_tokens": 4, "stream": True,
            "stream_options": {"include_usage": True}}
    request_id = rid()
    headers = {"x-request-id": request_id, "authorization": f"Bearer {BACKEND_KEY}"}
    via_gateway = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"x-request-id": request_id}, timeout=10)
    direct = httpx.post(f"{chat_sim.url}/v1/chat/completions", json=body, headers=headers, timeout=10)
    assert via_gateway.headers["content-type"] == direct.headers["content-type"] == "text/event-stream; charset=utf-8"
    normalise = lambda text: re.sub(r'"created":\d+', '"created":0', text)  # noqa: E731
    assert normalise(via_gateway.text) == normalise(direct.text)
    assert via_gateway.text.endswith("data: [DONE]\n\n")


# -- async client ---------------------------------------------------------------------------------------------

def test_async_client_chat_stream_and_embeddings_concurrently(gw) -> None:
    async def main() -> tuple[Any, ...]:
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10) as sdk:
            async def stream() -> list[Any]:
                response = await sdk.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=4,
                                                             stream=True, stream_options={"include_usage": True})
                return [chunk async for chunk in response]

            return await asyncio.gather(
                sdk.chat.completions.create(model="sim-chat", messages=MESSAGES, max_tokens=2),
                sdk.completions.create(model="sim-chat-v2", prompt="p", max_tokens=2),
                sdk.embeddings.create(model="text-embedding-3-small", input="async"),
                stream(),
                *(sdk.chat.completions.create(model="sql-lora", messages=MESSAGES, max_tokens=1) for _ in range(8)),
            )

    chat, completion, embedding, chunks, *loras = asyncio.run(main())
    assert chat.choices[0].message.content == " the model"
    assert completion.choices[0].text == " the model"
    assert len(embedding.data[0].embedding) == 64
    assert chunks[-1].usage.completion_tokens == 4 and chunks[-1].choices == []
    assert [r.model for r in loras] == ["sql-lora"] * 8


def test_async_client_errors(gw) -> None:
    async def main() -> None:
        async with AsyncOpenAI(base_url=f"{gw.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10) as sdk:
            with pytest.raises(openai.NotFoundError) as caught:
                await sdk.chat.completions.create(model="no-such-model", messages=MESSAGES)
            assert caught.value.code == "model_not_found"
            models = await sdk.models.list()
            assert "gpt-4o-mini" in [m.id async for m in models]

    asyncio.run(main())


# -- model listing ------------------------------------------------------------------------------------------

def backend_cards(sim: Running, key: str | None = None) -> list[dict[str, Any]]:
    headers = {"authorization": f"Bearer {key}"} if key else {}
    return httpx.get(f"{sim.url}/v1/models", headers=headers, timeout=5).json()["data"]


def test_models_are_the_union_with_each_backends_fields(gw, chat_sim, embed_sim, client) -> None:
    listing = httpx.get(f"{gw.url}/v1/models", timeout=5).json()
    assert listing["object"] == "list"
    cards = listing["data"]
    ids = [c["id"] for c in cards]
    assert ids == ["sim-chat", "sim-chat-v2", "sql-lora", "gpt-4o-mini", "whisper-1", "sim-embed", "text-embedding-3-small"]
    assert len(ids) == len(set(ids))
    by_id = {c["id"]: c for c in cards}
    for own in backend_cards(chat_sim, BACKEND_KEY) + backend_cards(embed_sim):
        mine = by_id[own["id"]]
        for field in ("id", "object", "owned_by", "root", "parent", "max_model_len"):
            assert mine[field] == own[field], (own["id"], field)
        assert isinstance(mine["created"], int) and "permission" in mine
    assert by_id["sql-lora"]["parent"] == "sim-chat" and by_id["sql-lora"]["root"] == "/adapters/sql-lora"
    assert by_id["sim-chat-v2"]["root"] == "org/sim-chat" and by_id["sim-chat"]["max_model_len"] == 512
    for alias, canonical in (("gpt-4o-mini", "sim-chat"), ("whisper-1", "sim-chat"), ("text-embedding-3-small", "sim-embed")):
        assert {k: v for k, v in by_id[alias].items() if k != "id"} == {k: v for k, v in by_id[canonical].items() if k != "id"}
    for card in cards:
        assert all(field in card for field in CARD_FIELDS)
    assert [m.id for m in client.models.list()] == ids


# -- aliases, served names, adapters -----------------------------------------------------------------------

@pytest.mark.parametrize(("name", "sim_name", "upstream"), [
    ("gpt-4o-mini", "chat", "sim-chat"),         # alias: canonical learned from the backend
    ("sim-chat-v2", "chat", "sim-chat-v2"),      # a second --served-model-name goes as it is
    ("sql-lora", "chat", "sql-lora"),            # a LoRA adapter goes as it is
])
def test_chat_names_reach_the_backend_as(client, chat_sim, name: str, sim_name: str, upstream: str) -> None:
    request_id = rid()
    reply = client.chat.completions.create(model=name, messages=MESSAGES, max_tokens=1, extra_headers={"X-Request-ID": request_id})
    assert only(chat_sim, request_id)["body"]["model"] == upstream
    assert reply.model == ("sql-lora" if name == "sql-lora" else "sim-chat")


def test_embedding_alias_reaches_the_backend_as_the_configured_model(client, embed_sim) -> None:
    request_id = rid()
    client.embeddings.create(model="text-embedding-3-small", input="x", extra_headers={"X-Request-ID": request_id})
    seen = only(embed_sim, request_id)
    assert seen["path"] == "/v1/embeddings" and seen["body"]["model"] == "sim-embed"


# -- errors ---------------------------------------------------------------------------------------------------

def test_unknown_model_is_not_found_with_the_list_of_models(client, chat_sim) -> None:
    before = chat_sim.app.state.received
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="gpt-5-ultra", messages=MESSAGES)
    error = caught.value
    assert error.status_code == 404 and error.code == "model_not_found" and error.param == "model"
    for name in ("gpt-5-ultra", "sim-chat", "sim-chat-v2", "sql-lora", "gpt-4o-mini", "sim-embed", "text-embedding-3-small"):
        assert name in error.message
    assert chat_sim.app.state.received == before


def test_missing_model_is_400(gw) -> None:
    error = assert_openai_error(httpx.post(f"{gw.url}/v1/chat/completions", json={"messages": MESSAGES}, timeout=5),
                                400, "missing_model")
    assert error["param"] == "model" and "sim-chat" in error["message"]


@pytest.mark.parametrize(("content", "content_type", "status"), [
    (b"{this is not json", "application/json", 400),
    (b'[{"model": "sim-chat"}]', "application/json", 400),
    (b'"sim-chat"', "application/json", 400),
    (b'{"model": "sim-chat", "messages": []}', "text/plain", 415),
    (b"model=sim-chat", "application/x-www-form-urlencoded", 415),
])
def test_bad_bodies_have_the_openai_shape(gw, content: bytes, content_type: str, status: int) -> None:
    response = httpx.post(f"{gw.url}/v1/chat/completions", content=content, headers={"content-type": content_type}, timeout=5)
    assert_openai_error(response, status)


def test_unknown_path_is_404_in_the_openai_shape(gw) -> None:
    error = assert_openai_error(httpx.post(f"{gw.url}/v1/engines/davinci/completions", json={}, timeout=5), 404, "not_found")
    assert "/v1/engines/davinci/completions" in error["message"]
    assert_openai_error(httpx.get(f"{gw.url}/nothing-here", timeout=5), 404, "not_found")


def test_backend_500_passes_through_unchanged(gw, chat_sim, client) -> None:
    body = {"model": "sim-chat", "messages": MESSAGES}
    via_gateway = httpx.post(f"{gw.url}/v1/chat/completions", json=body, headers={"x-sim-fault": "status_500"}, timeout=5)
    direct = httpx.post(f"{chat_sim.url}/v1/chat/completions", json=body, timeout=5,
                        headers={"x-sim-fault": "status_500", "authorization": f"Bearer {BACKEND_KEY}"})
    assert via_gateway.status_code == direct.status_code == 500
    assert via_gateway.content == direct.content
    with pytest.raises(openai.InternalServerError) as caught:
        client.chat.completions.create(model="sim-chat", messages=MESSAGES, extra_headers={"x-sim-fault": "status_500"})
    assert caught.value.status_code == 500 and caught.value.body == direct.json()["error"]


def test_backend_400_passes_through_unchanged(client, chat_sim, gw) -> None:
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model="gpt-4o-mini", messages=MESSAGES, max_tokens=600)
    assert caught.value.body == {
        "message": "max_tokens=600 cannot be greater than max_model_len=512. Please request fewer output tokens. "
                   "(parameter=max_tokens, value=600)",
        "type": "BadRequestError", "param": "max_tokens", "code": 400,
    }
    body = {"model": "sim-chat", "messages": MESSAGES, "max_tokens": 600, "stream": True}
    via_gateway = httpx.post(f"{gw.url}/v1/chat/completions", json=body, timeout=5)
    direct = httpx.post(f"{chat_sim.url}/v1/chat/completions", json=body, headers={"authorization": f"Bearer {BACKEND_KEY}"}, timeout=5)
    assert via_gateway.status_code == 400 and via_gateway.content == direct.content


def test_backend_garbage_instead_of_json_is_502(client, gw) -> None:
    with pytest.raises(openai.APIStatusError) as caught:
        client.chat.completions.create(model="sim-chat", messages=MESSAGES, extra_headers={"x-sim-fault": "garbage_json"})
    assert caught.value.status_code == 502 and caught.value.code == "bad_gateway"
    response = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "sim-chat", "messages": MESSAGES},
                          headers={"x-sim-fault": "garbage_json"}, timeout=5)
    error = assert_openai_error(response, 502, "bad_gateway")
    assert "127.0.0.1" not in error["message"] and BACKEND_KEY not in response.text


# -- headers ----------------------------------------------------------------------------------------------------

def test_request_id_is_forwarded_and_echoed(gw, chat_sim) -> None:
    request_id = rid()
    response = httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "sim-chat", "messages": MESSAGES, "max_tokens": 1},
                          headers={"X-Request-ID": request_id}, timeout=5)
    assert response.headers["x-request-id"] == request_id
    assert only(chat_sim, request_id)["headers"]["x-request-id"] == request_id


def test_request_id_is_generated_when_absent(gw, chat_sim, client) -> None:
    marker = f"marker {uuid.uuid4().hex}"
    raw = client.chat.completions.with_raw_response.create(
        model="sim-chat", messages=[{"role": "user", "content": marker}], max_tokens=1)
    generated = raw.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    seen = [r for r in list(chat_sim.app.state.requests) if r["body"].get("messages", [{}])[0].get("content") == marker]
    assert len(seen) == 1 and seen[0]["headers"]["x-request-id"] == generated
    assert raw.parse().id == f"chatcmpl-{generated}"


def test_hop_by_hop_headers_are_not_forwarded(gw, chat_sim) -> None:
    request_id = rid()
    httpx.post(f"{gw.url}/v1/chat/completions", json={"model": "sim-chat", "messages": MESSAGES, "max_tokens": 1}, timeout=5,
               headers={"X-Request-ID": request_id, "Connection": "keep-alive, X-Foo", "X-Foo": "hop-scoped",
                        "Keep-Alive": "timeout=5", "TE": "trailers", "Proxy-Authorization": "Basic eDp5",
                        "X-Bar": "end-to-end"})
    headers = only(chat_sim, request_id)["headers"]
    for name in ("x-foo", "keep-alive", "te", "proxy-authorization"):
        assert name not in headers, name
    assert "x-foo" not in headers.get("connection", "").lower()
    assert headers["x-bar"] == "end-to-end"


def test_client_authorization_never_reaches_the_backend_but_the_backend_key_does(client, chat_sim, embed_sim) -> None:
    chat_id, embed_id = rid(), rid()
    client.chat.completions.create(model="sim-chat", messages=MESSAGES, max_tokens=1, extra_headers={"X-Request-ID": chat_id})
    client.embeddings.create(model="sim-embed", input="x", extra_headers={"X-Request-ID": embed_id})
    chat_headers, embed_headers = only(chat_sim, chat_id)["headers"], only(embed_sim, embed_id)["headers"]
    assert chat_headers["authorization"] == f"Bearer {BACKEND_KEY}"
    assert "authorization" not in embed_headers
    assert CLIENT_KEY not in str(chat_headers) and CLIENT_KEY not in str(embed_headers)


# -- multipart --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["sim-chat", "whisper-1"])
def test_transcription_is_routed_by_the_form_field_and_aliases_rewritten(client, chat_sim, model: str) -> None:
    request_id = rid()
    audio = b"RIFF" + bytes(range(256)) * 8 + b'Content-Disposition: form-data; name="model"\r\n\r\nfake'
    result = client.audio.transcriptions.create(model=model, file=("speech.wav", audio, "audio/wav"),
                                                extra_headers={"X-Request-ID": request_id})
    assert result.text.startswith("transcribed ")
    seen = only(chat_sim, request_id)
    assert seen["path"] == "/v1/audio/transcriptions" and seen["body"]["model"] == "sim-chat"
    assert seen["headers"]["authorization"] == f"Bearer {BACKEND_KEY}"


def test_transcription_with_an_unknown_model_is_404(client) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        client.audio.transcriptions.create(model="whisper-9", file=("a.wav", b"RIFF", "audio/wav"))
    assert caught.value.code == "model_not_found"


# -- probes -----------------------------------------------------------------------------------------------------

def test_health_ready_status(gw, chat_sim, embed_sim) -> None:
    assert httpx.get(f"{gw.url}/health", timeout=5).status_code == 200
    ready = httpx.get(f"{gw.url}/ready", timeout=5)
    assert ready.status_code == 200 and ready.json()["ready"] is True and ready.json()["backends"] == ["chat", "embed"]
    status = httpx.get(f"{gw.url}/status", timeout=5)
    backends = {b["name"]: b for b in status.json()["backends"]}
    assert list(backends) == ["chat", "embed"]
    chat, embed = backends["chat"], backends["embed"]
    assert {"name", "url", "state", "models", "last_error"} <= set(chat)
    assert chat["url"] == chat_sim.url and chat["state"] == "ready" and chat["last_error"] is None
    assert chat["models"] == ["sim-chat", "sim-chat-v2", "sql-lora"] and chat["aliases"] == ["gpt-4o-mini", "whisper-1"]
    assert embed["url"] == embed_sim.url and embed["models"] == ["sim-embed"]
    assert BACKEND_KEY not in status.text


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def half_down(chat_sim):
    """One live backend and one whose port refuses connections."""
    with gateway(
        {"name": "chat", "url": chat_sim.url, "api_key": BACKEND_KEY},
        {"name": "down", "url": f"http://127.0.0.1:{closed_port()}", "models": ["down-model"], "api_key": "down-key-9"},
        retries={"attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.02},
    ) as server:
        yield server


def test_ready_is_503_naming_the_down_backend(half_down) -> None:
    response = httpx.get(f"{half_down.url}/ready", timeout=5)
    assert response.status_code == 503
    body = response.json()
    assert body["ready"] is False and body["not_ready"] == ["down"]
    status = {b["name"]: b for b in httpx.get(f"{half_down.url}/status", timeout=5).json()["backends"]}
    assert status["chat"]["state"] == "ready"
    assert status["down"]["state"] == "unhealthy" and status["down"]["last_error"]


def test_a_down_backend_is_503_with_retry_after_and_the_other_still_works(half_down) -> None:
    with OpenAI(base_url=f"{half_down.url}/v1", api_key=CLIENT_KEY, max_retries=0, timeout=10) as sdk:
        with pytest.raises(openai.APIStatusError) as caught:
            sdk.chat.completions.create(model="down-model", messages=MESSAGES)
        error = caught.value
        assert error.status_code == 503 and error.code == "backend_unavailable"
        assert int(error.response.headers["retry-after"]) >= 1
        assert "127.0.0.1" not in error.message and "down-key-9" not in error.response.text
        assert sdk.chat.completions.create(model="sim-chat", messages=MESSAGES, max_tokens=1).choices


def test_default_model_routes_requests_without_model(chat_sim) -> None:
    with gateway({"name": "chat", "url": chat_sim.url, "aliases": ["gpt-4o-mini"], "api_key": BACKEND_KEY},
                 default_model="gpt-4o-mini") as gw_default:
        request_id = rid()
        response = httpx.post(f"{gw_default.url}/v1/chat/completions", json={"messages": MESSAGES, "max_tokens": 1},
                              headers={"x-request-id": request_id}, timeout=5)
        assert response.status_code == 200 and response.json()["model"] == "sim-chat"
        assert only(chat_sim, request_id)["body"] == {"messages": MESSAGES, "max_tokens": 1, "model": "sim-chat"}


def test_model_list_is_refreshed_periodically() -> None:
    """A LoRA adapter loaded into a running backend appears without restarting the gateway."""
    with running(simulator(["base-model"], CHAT)) as sim, \
            gateway({"name": "chat", "url": sim.url}, model_refresh_interval=0.2, health_check_interval=0.1) as gw_fresh:
        listed = lambda: [c["id"] for c in httpx.get(f"{gw_fresh.url}/v1/models", timeout=5).json()["data"]]  # noqa: E731
        assert listed() == ["base-model"]
        sim.app.config.lora_adapters.append("late-lora")
        assert wait_for(lambda: listed() == ["base-model", "late-lora"], timeout=5)
        with OpenAI(base_url=f"{gw_fresh.url}/v1", api_key="unused", max_retries=0, timeout=10) as sdk:
            assert sdk.completions.create(model="late-lora", prompt="x", max_tokens=1).model == "late-lora"
