"""Edge cases of forwarding, with the network replaced by `httpx.MockTransport` (the I/O seam of
`create_app(settings, transport=...)`) and the gateway called in-process through `ASGITransport`.

The end-to-end tests cover the same paths over real sockets; these pin down the details.
"""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
import gzip
import re
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import orjson
import pytest

from vllm_gateway.api.model_routes import JSON_MODEL_ROUTES, MULTIPART_MODEL_ROUTES
from vllm_gateway.gateway import create_app
from vllm_gateway.settings import Settings

CHAT = {"name": "chat", "url": "http://chat-host:8000", "models": ["org/chat-model"], "aliases": ["gpt-4o-mini"],
        "api_key": "backend-key-123"}
EMBED = {"name": "embed", "url": "http://embed-host:8010", "models": ["org/embed-model"]}
SECRETS = ("chat-host", "embed-host", "8000", "8010", "backend-key-123")


class Upstream:
    """The backends: records every request (with its body) and answers with `respond`."""

    def __init__(self, respond: Callable[[httpx.Request], Any] | None = None) -> None:
        self.requests: list[httpx.Request] = []
        self.bodies: list[bytes] = []
        self.cancelled = 0
        self.respond = respond or (lambda request: httpx.Response(200, json={"ok": True}))

    async def __call__(self, request: httpx.Request) -> httpx.Response:
        self.bodies.append(await request.aread())
        self.requests.append(request)
        try:
            answer = self.respond(request)
            if asyncio.iscoroutine(answer):
                answer = await answer
        except asyncio.CancelledError:
            self.cancelled += 1
            raise
        return answer

    @property
    def last(self) -> httpx.Request:
        return self.requests[-1]


def make_gateway(upstream: Upstream, *backends: dict[str, Any], **options: Any):
    options.setdefault("retries", {"attempts": 2, "backoff_initial": 0.0, "backoff_max": 0.0})
    settings = Settings(backends=list(backends or (CHAT, EMBED)), **options)
    return create_app(settings, transport=httpx.MockTransport(upstream))


def call(app, method: str, path: str, **kwargs: Any) -> httpx.Response:
    async def go() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def assert_openai_error(response: httpx.Response, status: int, code: str | int | None = None) -> dict[str, Any]:
    assert response.status_code == status
    assert response.headers["content-type"] == "application/json"
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    if code is not None:
        assert error["code"] == code
    for secret in SECRETS:
        assert secret not in response.text, f"{secret!r} leaked in {response.text}"
    return error


CHAT_BODY = {"model": "org/chat-model", "messages": [{"role": "user", "content": "hi"}]}


# -- the body ------------------------------------------------------------------------------------------

def test_body_goes_upstream_byte_for_byte_when_the_model_is_not_rewritten() -> None:
    upstream = Upstream()
    raw = b'{ "messages" : [ {"role":"user","content":"h\\u00e9 \xc3\xa9"} ],\n  "model":"org/chat-model", "n":1 }'
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", content=raw,
                    headers={"content-type": "application/json"})
    assert response.status_code == 200
    assert upstream.bodies == [raw]
    assert upstream.last.url == "http://chat-host:8000/v1/chat/completions"
    assert upstream.last.headers["content-length"] == str(len(raw))


def test_alias_is_rewritten_to_the_canonical_name_and_nothing_else_changes() -> None:
    upstream = Upstream()
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "stream": False, "seed": 7}
    call(make_gateway(upstream), "POST", "/v1/chat/completions", json=body)
    assert orjson.loads(upstream.bodies[0]) == {**body, "model": "org/chat-model"}
    assert upstream.last.headers["content-length"] == str(len(upstream.bodies[0]))


def test_default_model_routes_a_request_without_model_and_names_it_upstream() -> None:
    upstream = Upstream()
    app = make_gateway(upstream, default_model="gpt-4o-mini")
    response = call(app, "POST", "/v1/chat/completions", json={"messages": []})
    assert response.status_code == 200 and upstream.last.url.host == "chat-host"
    assert orjson.loads(upstream.bodies[0]) == {"messages": [], "model": "org/chat-model"}


def test_multipart_alias_is_rewritten_inside_the_form() -> None:
    upstream = Upstream(lambda request: httpx.Response(200, json={"text": "ok"}))
    audio = b"RIFF\x00\x00WAVE" + bytes(range(256)) + b'name="model"'
    response = call(make_gateway(upstream), "POST", "/v1/audio/transcriptions",
                    data={"model": "gpt-4o-mini", "language": "en"}, files={"file": ("a.wav", audio, "audio/wav")})
    assert response.status_code == 200 and response.json() == {"text": "ok"}
    sent = upstream.last
    assert sent.url.path == "/v1/audio/transcriptions" and sent.headers["content-type"].startswith("multipart/form-data; boundary=")
    assert sent.headers["content-length"] == str(len(upstream.bodies[0]))
    head = b"Content-Type: " + sent.headers["content-type"].encode() + b"\r\n\r\n"
    form = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + upstream.bodies[0])
    parts = {p.get_param("name", header="content-disposition"): p.get_payload(decode=True) for p in form.iter_parts()}
    assert parts == {"model": b"org/chat-model", "language": b"en", "file": audio}


@pytest.mark.parametrize("path", JSON_MODEL_ROUTES)
def test_every_json_model_route_is_forwarded_to_the_same_path(path: str) -> None:
    upstream = Upstream()
    response = call(make_gateway(upstream), "POST", path + "?trace=1&x=%20y", json={"model": "org/embed-model"})
    assert response.status_code == 200
    assert upstream.last.url.host == "embed-host" and upstream.last.url.path == path
    assert upstream.last.url.query == b"trace=1&x=%20y"


@pytest.mark.parametrize("path", MULTIPART_MODEL_ROUTES)
def test_audio_routes_take_the_model_from_the_form(path: str) -> None:
    upstream = Upstream()
    response = call(make_gateway(upstream), "POST", path, data={"model": "org/embed-model"},
                    files={"file": ("a.wav", b"RIFF", "audio/wav")})
    assert response.status_code == 200 and upstream.last.url.host == "embed-host" and upstream.last.url.path == path


# -- headers -------------------------------------------------------------------------------------------

def test_hop_by_hop_and_client_credentials_stay_behind() -> None:
    upstream = Upstream()
    headers = {
        "connection": "keep-alive, X-Foo", "x-foo": "connection-scoped", "keep-alive": "timeout=5",
        "te": "trailers", "trailer": "x-checksum", "upgrade": "h2c", "proxy-authorization": "Basic cHJveHk=",
        "proxy-connection": "keep-alive", "authorization": "Bearer client-key", "x-api-key": "client-key",
        "cookie": "session=1", "x-custom": "kept", "openai-organization": "org-1", "user-agent": "my-app/1.0",
    }
    call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY, headers=headers)
    sent = upstream.last.headers
    for name in ("x-foo", "keep-alive", "te", "trailer", "upgrade", "proxy-authorization", "proxy-connection",
                 "x-api-key", "cookie"):
        assert name not in sent, name
    assert sent.get("connection", "").lower() in ("", "keep-alive")
    assert sent["authorization"] == "Bearer backend-key-123"
    assert "client-key" not in str(sent.raw)
    assert sent["x-custom"] == "kept" and sent["openai-organization"] == "org-1" and sent["user-agent"] == "my-app/1.0"
    assert sent["host"] == "chat-host:8000"


def test_no_authorization_reaches_a_backend_without_a_key() -> None:
    upstream = Upstream()
    call(make_gateway(upstream), "POST", "/v1/embeddings", json={"model": "org/embed-model", "input": "x"},
         headers={"authorization": "Bearer client-key"})
    assert "authorization" not in upstream.last.headers


def test_response_headers_are_relayed_without_hop_by_hop_ones() -> None:
    def respond(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=b'{"a":1}', headers=[
            ("content-type", "application/json"), ("x-backend-thing", "yes"), ("connection", "close"),
            ("keep-alive", "timeout=5"), ("x-request-id", "backend-made-this-up"), ("server", "uvicorn"),
            ("set-cookie", "a=1"), ("set-cookie", "b=2"),
        ])

    response = call(make_gateway(Upstream(respond)), "POST", "/v1/chat/completions", json=CHAT_BODY,
                    headers={"x-request-id": "client-rid-1"})
    assert response.content == b'{"a":1}' and response.headers["content-type"] == "application/json"
    assert response.headers["x-backend-thing"] == "yes" and response.headers.get_list("set-cookie") == ["a=1", "b=2"]
    assert "keep-alive" not in response.headers and response.headers.get("server") != "uvicorn"
    assert response.headers.get_list("x-request-id") == ["client-rid-1"]
    assert response.headers["content-length"] == "7"


def test_request_id_is_forwarded_and_echoed() -> None:
    upstream = Upstream()
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY,
                    headers={"x-request-id": "req-abc_123.4"})
    assert upstream.last.headers.get_list("x-request-id") == ["req-abc_123.4"]
    assert response.headers["x-request-id"] == "req-abc_123.4"


@pytest.mark.parametrize("given", [None, "has space", "x" * 200, "caf\u00e9"])
def test_request_id_is_generated_when_absent_or_unusable(given: str | None) -> None:
    upstream = Upstream()
    headers = {"x-request-id": given.encode("utf-8")} if given else {}
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY, headers=headers)
    rid = response.headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", rid)
    assert upstream.last.headers.get_list("x-request-id") == [rid]


def test_request_id_is_echoed_on_the_gateways_own_errors() -> None:
    response = call(make_gateway(Upstream()), "POST", "/v1/chat/completions", json={"model": "nope"},
                    headers={"x-request-id": "rid-err"})
    assert response.status_code == 404 and response.headers["x-request-id"] == "rid-err"


# -- the gateway's own errors ----------------------------------------------------------------------------

def test_unknown_model_lists_the_models() -> None:
    upstream = Upstream()
    error = assert_openai_error(call(make_gateway(upstream), "POST", "/v1/chat/completions", json={"model": "nope"}),
                                404, "model_not_found")
    assert error["param"] == "model" and "`nope`" in error["message"]
    assert "gpt-4o-mini, org/chat-model, org/embed-model" in error["message"]
    assert upstream.requests == []


def test_missing_model_without_default_is_400() -> None:
    error = assert_openai_error(call(make_gateway(Upstream()), "POST", "/v1/chat/completions", json={"messages": []}),
                                400, "missing_model")
    assert error["param"] == "model" and "org/chat-model" in error["message"]


@pytest.mark.parametrize(("kwargs", "status"), [
    ({"content": b"{not json", "headers": {"content-type": "application/json"}}, 400),
    ({"content": b"[1, 2]", "headers": {"content-type": "application/json"}}, 400),
    ({"content": b"", "headers": {"content-type": "application/json"}}, 400),
    ({"content": b'{"model": "org/chat-model"}', "headers": {"content-type": "text/plain"}}, 415),
    ({"content": b'{"model": "org/chat-model"}'}, 415),
    ({"json": {"model": 5}}, 400),
    ({"json": {"model": ""}}, 400),
])
def test_bad_bodies(kwargs: dict, status: int) -> None:
    upstream = Upstream()
    assert_openai_error(call(make_gateway(upstream), "POST", "/v1/chat/completions", **kwargs), status)
    assert upstream.requests == []


def test_body_over_the_limit_is_413_without_reaching_the_backend() -> None:
    upstream = Upstream()
    app = make_gateway(upstream, max_body_bytes=1024)
    big = {"model": "org/chat-model", "prompt": "x" * 2000}
    assert_openai_error(call(app, "POST", "/v1/completions", json=big), 413, "request_too_large")
    assert upstream.requests == []


def test_wrong_method_and_unknown_path_have_the_openai_shape() -> None:
    app = make_gateway(Upstream())
    assert_openai_error(call(app, "GET", "/v1/chat/completions"), 405, "method_not_allowed")
    assert_openai_error(call(app, "POST", "/v1/models"), 405, "method_not_allowed")
    error = assert_openai_error(call(app, "POST", "/v1/nope", json=CHAT_BODY), 404, "not_found")
    assert "/v1/nope" in error["message"]


# -- upstream failures -------------------------------------------------------------------------------------

def refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("[Errno 111] Connection refused to chat-host:8000", request=request)


def test_refused_connection_is_retried_then_503_with_retry_after() -> None:
    upstream = Upstream(refuse)
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY)
    assert_openai_error(response, 503, "backend_unavailable")
    assert int(response.headers["retry-after"]) >= 1
    assert len(upstream.requests) == 2


def test_no_retry_when_one_attempt_is_configured() -> None:
    upstream = Upstream(refuse)
    response = call(make_gateway(upstream, retries={"attempts": 1}), "POST", "/v1/chat/completions", json=CHAT_BODY)
    assert response.status_code == 503 and len(upstream.requests) == 1


def test_backend_503_is_retried_and_the_last_one_passed_through() -> None:
    body = b'{"error":{"message":"The engine is currently busy","type":"Service Unavailable","param":null,"code":503}}'
    upstream = Upstream(lambda r: httpx.Response(503, content=body, headers={"content-type": "application/json"}))
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY)
    assert response.status_code == 503 and response.content == body and len(upstream.requests) == 2


@pytest.mark.parametrize(("status", "body"), [
    (400, b'{"error":{"message":"max_tokens=600 cannot be greater than max_model_len=512.","type":"BadRequestError","param":"max_tokens","code":400}}'),
    (500, b'{"error":{"message":"The server had an error","type":"InternalServerError","param":null,"code":500}}'),
    (422, b'{"detail":[{"type":"missing","loc":["body","messages"]}]}'),
    (429, b'{"error":{"message":"slow down","type":"rate_limit","param":null,"code":429}}'),
])
def test_backend_errors_pass_through_unchanged(status: int, body: bytes) -> None:
    upstream = Upstream(lambda r: httpx.Response(status, content=body, headers={"content-type": "application/json"}))
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY)
    assert response.status_code == status and response.content == body
    assert len(upstream.requests) == 1  # only 503 and refused connections are retried


def test_non_json_backend_answers_pass_through() -> None:
    upstream = Upstream(lambda r: httpx.Response(500, content=b"Internal Server Error", headers={"content-type": "text/plain; charset=utf-8"}))
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY)
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert response.headers["content-type"] == "text/plain; charset=utf-8"


def test_fastapi_not_found_from_the_backend_gets_the_openai_shape() -> None:
    upstream = Upstream(lambda r: httpx.Response(404, json={"detail": "Not Found"}))
    error = assert_openai_error(call(make_gateway(upstream), "POST", "/v1/embeddings", json={"model": "org/chat-model", "input": "x"}),
                                404, "unsupported_endpoint")
    assert "/v1/embeddings" in error["message"]


def test_vllm_auth_error_from_the_backend_gets_the_openai_shape() -> None:
    upstream = Upstream(lambda r: httpx.Response(401, json={"error": "Unauthorized"}))
    error = assert_openai_error(call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY), 401)
    assert "Unauthorized" in error["message"]


def test_garbage_instead_of_promised_json_is_502() -> None:
    upstream = Upstream(lambda r: httpx.Response(200, content=b"<html>oops", headers={"content-type": "application/json"}))
    assert_openai_error(call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY), 502, "bad_gateway")


def test_broken_http_from_the_backend_is_502() -> None:
    def broken(request: httpx.Request) -> httpx.Response:
        raise httpx.RemoteProtocolError("illegal status line from chat-host:8000", request=request)

    upstream = Upstream(broken)
    assert_openai_error(call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY), 502, "bad_gateway")
    assert len(upstream.requests) == 1


def test_no_response_head_in_time_is_504_and_the_upstream_request_is_cancelled() -> None:
    async def hang(request: httpx.Request) -> httpx.Response:
        await asyncio.sleep(30)
        return httpx.Response(200)

    upstream = Upstream(hang)
    app = make_gateway(upstream, timeouts={"response_head": 0.2})
    error = assert_openai_error(call(app, "POST", "/v1/chat/completions", json=CHAT_BODY), 504, "upstream_timeout")
    assert "timeouts.response_head" in error["message"]
    assert upstream.cancelled == 1


def test_gzip_encoded_json_is_decoded_for_the_client() -> None:
    payload = b'{"object":"chat.completion","choices":[]}'
    upstream = Upstream(lambda r: httpx.Response(200, content=gzip.compress(payload),
                                                 headers={"content-type": "application/json", "content-encoding": "gzip"}))
    response = call(make_gateway(upstream), "POST", "/v1/chat/completions", json=CHAT_BODY)
    assert response.content == payload and "content-encoding" not in response.headers
    assert response.headers["content-length"] == str(len(payload))


# -- streams ---------------------------------------------------------------------------------------------

EVENTS = [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n', b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n',
          b'data: {"choices":[],"usage":{"total_tokens":3}}\n\n', b"data: [DONE]\n\n"]


def sse(chunks: Callable[[], AsyncIterator[bytes]]) -> Callable[[httpx.Request], httpx.Response]:
    return lambda request: httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream; charset=utf-8"})


def test_stream_is_relayed_unchanged() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for event in EVENTS:
            yield event

    response = call(make_gateway(Upstream(sse(chunks))), "POST", "/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    assert response.status_code == 200 and response.content == b"".join(EVENTS)
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    assert "content-length" not in response.headers


def test_stream_broken_by_the_backend_ends_with_an_error_event() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield EVENTS[0]
        raise httpx.ReadError("connection reset by chat-host:8000")

    response = call(make_gateway(Upstream(sse(chunks))), "POST", "/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    assert response.content.startswith(EVENTS[0])
    tail = response.content[len(EVENTS[0]):].split(b"\n\n")
    assert orjson.loads(tail[0][len(b"data: "):])["error"]["code"] == "bad_gateway"
    assert tail[1:] == [b"data: [DONE]", b""]
    assert "chat-host" not in response.text


def test_stream_that_goes_quiet_ends_with_a_timeout_event() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield EVENTS[0]
        await asyncio.sleep(30)
        yield EVENTS[1]

    app = make_gateway(Upstream(sse(chunks)), timeouts={"stream_idle": 0.2})
    response = call(app, "POST", "/v1/chat/completions", json={**CHAT_BODY, "stream": True})
    events = response.content.split(b"\n\n")
    assert events[0] + b"\n\n" == EVENTS[0]
    error = orjson.loads(events[1][len(b"data: "):])["error"]
    assert error["code"] == "upstream_timeout" and "timeouts.stream_idle" in error["message"]
    assert events[2] == b"data: [DONE]"


# -- replicas --------------------------------------------------------------------------------------------

def test_a_running_stream_counts_as_outstanding_on_its_replica() -> None:
    hosts: list[str] = []
    release = asyncio.Event()

    async def respond(request: httpx.Request) -> httpx.Response:
        hosts.append(request.url.host)

        async def chunks() -> AsyncIterator[bytes]:
            yield EVENTS[0]
            await release.wait()
            yield EVENTS[-1]

        return httpx.Response(200, content=chunks(), headers={"content-type": "text/event-stream"})

    app = make_gateway(Upstream(respond), {"name": "chat", "urls": ["http://replica-a:1", "http://replica-b:2"],
                                           "models": ["org/chat-model"]})

    async def go() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
            first = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True}))
            while not hosts:
                await asyncio.sleep(0.01)
            await asyncio.sleep(0.05)  # the first stream's head is out; its body is still coming
            second = asyncio.create_task(client.post("/v1/chat/completions", json={**CHAT_BODY, "stream": True}))
            while len(hosts) < 2:
                await asyncio.sleep(0.01)
            release.set()
            await asyncio.gather(first, second)

    asyncio.run(go())
    assert sorted(hosts) == ["replica-a", "replica-b"]


# -- a client that leaves after [DONE] has not abandoned anything ---------------------------------------------

def _sample(app, name: str, **labels: str) -> float:
    return app.state.metrics.registry.get_sample_value(name, labels) or 0.0


def test_closing_after_done_is_not_a_client_disconnect() -> None:
    """Driven as raw ASGI: the client leaves right after it received `data: [DONE]`, while the
    backend takes a moment to end its stream (as the `openai` SDK and a real server race)."""
    async def chunks() -> AsyncIterator[bytes]:
        for event in EVENTS:
            yield event
        await asyncio.sleep(0.1)  # the backend's terminating chunk is still on its way

    app = make_gateway(Upstream(sse(chunks)))
    sent: list[dict[str, Any]] = []
    got_done = asyncio.Event()
    body = orjson.dumps({**CHAT_BODY, "stream": True})
    inbox = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> dict[str, Any]:
        if inbox:
            return inbox.pop(0)
        await got_done.wait()
        return {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if b"data: [DONE]" in message.get("body", b""):
            got_done.set()

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": "/v1/chat/completions", "raw_path": b"/v1/chat/completions", "query_string": b"", "root_path": "",
             "headers": [(b"host", b"gateway"), (b"content-type", b"application/json"),
                         (b"content-length", str(len(body)).encode())],
             "client": ("127.0.0.1", 50000), "server": ("127.0.0.1", 8080), "state": {}}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 200
    assert b"".join(m.get("body", b"") for m in sent[1:]).startswith(b"".join(EVENTS))
    assert _sample(app, "gateway_client_disconnects_total", model="org/chat-model") == 0
    assert _sample(app, "gateway_requests_total", model="org/chat-model", backend="chat",
                   endpoint="/v1/chat/completions", status="200") == 1
