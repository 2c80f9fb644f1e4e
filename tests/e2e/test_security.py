"""Who gets in, and what reaches a backend: API keys, path tricks, request smuggling, headers."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers import CHAT, EMBEDDING, gateway, running, simulator

KEY = "sk-gateway-test-key"


@pytest.fixture(scope="module")
def backends():
    with running(simulator(["sim-chat"], CHAT, api_key="backend-secret")) as chat, \
            running(simulator(["sim-embed"], EMBEDDING)) as embed:
        yield chat, embed


@pytest.fixture(scope="module")
def secured(backends):
    chat, embed = backends
    with gateway(
        {"name": "chat", "url": chat.url, "api_key": "backend-secret"},
        {"name": "embed", "url": embed.url},
        api_keys=[KEY, "second-key"],
    ) as gw:
        yield gw, chat, embed


PROTECTED = [
    ("GET", "/v1/models", None),
    ("POST", "/v1/chat/completions", {"model": "sim-chat", "messages": [{"role": "user", "content": "x"}]}),
    ("POST", "/v1/embeddings", {"model": "sim-embed", "input": "x"}),
    ("POST", "/tokenize", {"model": "sim-chat", "prompt": "x"}),
    ("POST", "/pooling", {"model": "sim-embed", "input": "x"}),
    ("GET", "/status", None),
]


@pytest.mark.parametrize("method,path,body", PROTECTED)
@pytest.mark.parametrize("headers", [
    {},
    {"Authorization": "Bearer wrong-key"},
    {"Authorization": f"Basic {KEY}"},
    {"x-api-key": KEY},
    {"Authorization": f"Bearer {KEY}x"},
], ids=["none", "wrong", "basic-scheme", "x-api-key-header", "key-prefix"])
def test_protected_routes_refuse_without_the_right_key(secured, method, path, body, headers):
    gw, _, _ = secured
    response = httpx.request(method, f"{gw.url}{path}", json=body, headers=headers, timeout=5)
    assert response.status_code == 401
    error = response.json()["error"]
    assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
    assert KEY not in response.text


def test_every_configured_key_works_and_the_sdk_gets_in(secured):
    gw, chat, _ = secured
    for key in (KEY, "second-key"):
        client = OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)
        assert {m.id for m in client.models.list()} >= {"sim-chat", "sim-embed"}
    client = OpenAI(base_url=f"{gw.url}/v1", api_key=KEY, max_retries=0)
    client.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "x"}], max_tokens=1)
    received = chat.app.state.requests[-1]["headers"]
    assert received["authorization"] == "Bearer backend-secret", "the backend's own key replaces the client's"


def test_the_sdk_sees_authentication_error(secured):
    gw, _, _ = secured
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()


@pytest.mark.parametrize("path", ["/health", "/ready", "/metrics"])
def test_probes_and_metrics_stay_open(secured, path):
    gw, _, _ = secured
    assert httpx.get(f"{gw.url}{path}", timeout=5).status_code == 200


def test_metrics_key_closes_metrics(backends):
    chat, _ = backends
    with gateway({"name": "chat", "url": chat.url, "api_key": "backend-secret"}, metrics_api_key="scrape-key") as gw:
        assert httpx.get(f"{gw.url}/metrics").status_code == 401
        assert httpx.get(f"{gw.url}/metrics", headers={"Authorization": "Bearer scrape-key"}).status_code == 200
        assert httpx.get(f"{gw.url}/health").status_code == 200


def test_client_authorization_is_never_forwarded_without_keys(backends):
    _, embed = backends
    with gateway({"name": "embed", "url": embed.url}) as gw:
        httpx.post(f"{gw.url}/v1/embeddings", json={"model": "sim-embed", "input": "x"},
                   headers={"Authorization": "Bearer client-secret", "Cookie": "s=1", "x-api-key": "k"})
        received = embed.app.state.requests[-1]["headers"]
        assert "authorization" not in received and "cookie" not in received and "x-api-key" not in received


# -- raw HTTP: what the request line and framing can and cannot do -----------------------------------

def raw_request(url: str, payload: bytes, timeout: float = 5.0) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=timeout) as sock:
        sock.sendall(payload)
        chunks = []
        try:
            while True:
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
        except TimeoutError:
            pass
    return b"".join(chunks)


def status_of(raw: bytes) -> int:
    return int(raw.split(b" ", 2)[1]) if raw.startswith(b"HTTP/1.1 ") else 0


JSON_BODY = b'{"model":"sim-embed","input":"x"}'


@pytest.fixture
def open_gw(backends):
    chat, embed = backends
    with gateway({"name": "chat", "url": chat.url, "api_key": "backend-secret"}, {"name": "embed", "url": embed.url}) as gw:
        yield gw, chat, embed


@pytest.mark.parametrize("target", [
    b"/v1/../admin",
    b"/v1/embeddings/../../_sim/stats",
    b"/v1/%2e%2e/_sim/stats",
    b"//_sim/stats",
    b"/_sim/stats",
    b"/v1/embeddings/extra",
    b"http://evil.example/_sim/stats",
])
def test_path_tricks_reach_no_backend_path(open_gw, target):
    gw, chat, embed = open_gw
    before = (chat.app.state.received, embed.app.state.received)
    request = (b"POST " + target + b" HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Connection: close\r\nContent-Length: " + str(len(JSON_BODY)).encode() + b"\r\n\r\n" + JSON_BODY)
    raw = raw_request(gw.url, request)
    assert status_of(raw) in (400, 404)
    assert (chat.app.state.received, embed.app.state.received) == before


def test_absolute_url_in_request_line_goes_to_the_configured_backend_only(open_gw):
    gw, _, embed = open_gw
    before = embed.app.state.received
    request = (b"POST http://evil.example:1/v1/embeddings HTTP/1.1\r\nHost: evil.example\r\n"
               b"Content-Type: application/json\r\nConnection: close\r\nContent-Length: "
               + str(len(JSON_BODY)).encode() + b"\r\n\r\n" + JSON_BODY)
    assert status_of(raw_request(gw.url, request)) == 200
    assert embed.app.state.received == before + 1
    seen = embed.app.state.requests[-1]
    assert seen["path"] == "/v1/embeddings"
    assert seen["headers"]["host"] == embed.url.removeprefix("http://"), "Host is the backend's, not the client's"


def test_content_length_and_transfer_encoding_cannot_smuggle_a_second_request(open_gw):
    gw, chat, embed = open_gw
    before = (chat.app.state.received, embed.app.state.received)
    smuggled = b"GET /_sim/stats HTTP/1.1\r\nHost: x\r\n\r\n"
    chunked = hex(len(JSON_BODY))[2:].encode() + b"\r\n" + JSON_BODY + b"\r\n0\r\n\r\n"
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: " + str(len(chunked)).encode() + b"\r\nTransfer-Encoding: chunked\r\n"
               b"Connection: close\r\n\r\n" + chunked + smuggled)
    raw = raw_request(gw.url, request)
    assert status_of(raw) in (200, 400)
    after = (chat.app.state.received, embed.app.state.received)
    assert after[0] == before[0] and after[1] - before[1] <= 1
    assert all(r["path"] != "/_sim/stats" for r in embed.app.state.requests)


def test_conflicting_content_lengths_are_refused(open_gw):
    gw, _, embed = open_gw
    before = embed.app.state.received
    request = (b"POST /v1/embeddings HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
               b"Content-Length: 5\r\nContent-Length: " + str(len(JSON_BODY)).encode() + b"\r\n"
               b"Connection: close\r\n\r\n" + JSON_BODY)
    assert status_of(raw_request(gw.url, request)) in (0, 400)
    assert embed.app.state.received == before


def test_body_over_the_limit_is_413_without_reading_it(backends):
    _, embed = backends
    with gateway({"name": "embed", "url": embed.url}, max_body_bytes=4096) as gw:
        before = embed.app.state.received
        big = b'{"model":"sim-embed","input":"' + b"x" * 100_000 + b'"}'
        response = httpx.post(f"{gw.url}/v1/embeddings", content=big, headers={"content-type": "application/json"})
        assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
        # Declared small but sent chunked and large: counted while reading.
        def chunks():
            yield big[:1000]
            yield big[1000:]
        response = httpx.post(f"{gw.url}/v1/embeddings", content=chunks(), headers={"content-type": "application/json"})
        assert response.status_code == 413
        assert embed.app.state.received == before


def test_cors_is_off_by_default_and_configurable(backends):
    _, embed = backends
    preflight = {"Origin": "https://app.example", "Access-Control-Request-Method": "POST"}
    with gateway({"name": "embed", "url": embed.url}) as gw:
        response = httpx.options(f"{gw.url}/v1/embeddings", headers=preflight)
        assert "access-control-allow-origin" not in response.headers
    with gateway({"name": "embed", "url": embed.url}, cors={"allow_origins": ["https://app.example"]}) as gw:
        response = httpx.options(f"{gw.url}/v1/embeddings", headers=preflight)
        assert response.headers["access-control-allow-origin"] == "https://app.example"
