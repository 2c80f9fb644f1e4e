"""Fault injection: for each way a backend can fail, the exact answer the client gets, and that
the other models keep working."""

from __future__ import annotations

import socket

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers import CHAT, EMBEDDING, gateway, running, simulator, wait_for

CHAT_BODY = {"model": "sim-chat", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def chat_sim():
    with running(simulator(["sim-chat"], CHAT, token_delay=0.01)) as sim:
        yield sim


@pytest.fixture(scope="module")
def embed_sim():
    with running(simulator(["sim-embed"], EMBEDDING)) as sim:
        yield sim


@pytest.fixture(scope="module")
def gw(chat_sim, embed_sim):
    fast = {"response_head": 1.0, "stream_idle": 0.5}
    with gateway(
        {"name": "chat", "url": chat_sim.url, "timeouts": fast},
        {"name": "embed", "url": embed_sim.url},
        retries={"attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.05},
    ) as gw:
        yield gw


def post(gw, body, fault=None, path="/v1/chat/completions", **kwargs):
    headers = {"x-sim-fault": fault} if fault else {}
    return httpx.post(f"{gw.url}{path}", json=body, headers=headers, timeout=10, **kwargs)


def embeddings_still_work(gw) -> None:
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    assert len(client.embeddings.create(model="sim-embed", input="still here").data) == 1


def test_hang_before_head_gives_504_and_cancels_upstream(gw, chat_sim):
    before = chat_sim.app.state.disconnects
    response = post(gw, CHAT_BODY, "hang_head")
    assert response.status_code == 504
    error = response.json()["error"]
    assert error["code"] == "upstream_timeout" and "response_head" in error["message"]
    assert wait_for(lambda: chat_sim.app.state.disconnects == before + 1 and chat_sim.app.state.running == 0)
    embeddings_still_work(gw)


def test_hang_mid_stream_ends_with_sse_error_event(gw, chat_sim):
    before = chat_sim.app.state.disconnects
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json={**CHAT_BODY, "stream": True, "max_tokens": 10},
                      headers={"x-sim-fault": "hang_stream"}, timeout=10) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "data: [DONE]"
    assert '"code":"upstream_timeout"' in events[-2] and "stream_idle" in events[-2]
    assert wait_for(lambda: chat_sim.app.state.disconnects == before + 1)
    embeddings_still_work(gw)


def test_hang_mid_stream_raises_in_the_openai_sdk(gw):
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0,
                    default_headers={"x-sim-fault": "hang_stream"})
    stream = client.chat.completions.create(model="sim-chat", messages=[{"role": "user", "content": "x"}],
                                            max_tokens=10, stream=True)
    with pytest.raises(openai.APIError, match="stream_idle"):
        for _ in stream:
            pass


def test_backend_closing_mid_stream_gives_error_event(gw):
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json={**CHAT_BODY, "stream": True, "max_tokens": 10},
                      headers={"x-sim-fault": "close_mid_stream"}, timeout=10) as response:
        assert response.status_code == 200
        events = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert any('"delta":{"content"' in e for e in events), "chunks sent before the crash reach the client"
    assert '"code":"bad_gateway"' in events[-2] and events[-1] == "data: [DONE]"
    embeddings_still_work(gw)


def test_garbage_instead_of_json_is_502(gw):
    response = post(gw, CHAT_BODY, "garbage_json")
    assert response.status_code == 502
    assert response.json()["error"]["code"] == "bad_gateway"
    assert "127.0.0.1" not in response.text, "no backend address in errors"


def test_backend_500_passes_through_unchanged(gw):
    response = post(gw, CHAT_BODY, "status_500")
    assert response.status_code == 500
    assert response.json()["error"]["type"] == "InternalServerError"


def test_backend_503_is_retried_once_then_passed_through(gw, chat_sim):
    before = chat_sim.app.state.received
    response = post(gw, CHAT_BODY, "status_503")
    assert response.status_code == 503
    assert chat_sim.app.state.received == before + 2, "attempts: 2 means one retry"


def test_slow_backend_within_timeouts_answers(gw):
    response = post(gw, {**CHAT_BODY, "max_tokens": 3}, "slow")
    assert response.status_code == 200
    assert response.json()["usage"]["completion_tokens"] == 3


def test_refused_connection_is_503_with_retry_after_and_opens_the_breaker(embed_sim):
    port = closed_port()  # nothing listens here
    with gateway(
        {"name": "dead", "url": f"http://127.0.0.1:{port}", "models": ["gone"]},
        {"name": "embed", "url": embed_sim.url},
        retries={"attempts": 2, "backoff_initial": 0.01, "backoff_max": 0.02},
        circuit_breaker={"failure_threshold": 2, "reset_timeout": 30},
        health_check_interval=60,
    ) as gw:
        # Pretend the last health check passed, so that traffic is what finds the backend gone.
        dead = gw.app.state.registry.backends["dead"]
        gw.call(_mark_ready(dead))
        first = post(gw, {"model": "gone", "input": "x"}, path="/v1/embeddings")
        assert first.status_code == 503 and int(first.headers["retry-after"]) >= 1
        assert first.json()["error"]["code"] == "backend_unavailable"
        # Two connection failures (one request plus its retry) opened the breaker: answered at once.
        second = post(gw, {"model": "gone", "input": "x"}, path="/v1/embeddings")
        assert second.status_code == 503 and "circuit open" in second.json()["error"]["message"]
        status = httpx.get(f"{gw.url}/status").json()
        assert {b["name"]: b["circuit"] for b in status["backends"]}["dead"] == "open"
        embeddings_still_work(gw)


def test_breaker_half_opens_and_closes_when_the_backend_returns():
    port = closed_port()
    with gateway(
        {"name": "chat", "url": f"http://127.0.0.1:{port}", "models": ["sim-chat"]},
        retries={"attempts": 1},
        circuit_breaker={"failure_threshold": 1, "reset_timeout": 0.3},
        health_check_interval=60,
    ) as gw:
        assert post(gw, CHAT_BODY).status_code == 503
        assert "circuit open" in post(gw, CHAT_BODY).json()["error"]["message"]
        with running(simulator(["sim-chat"], CHAT), port=port):
            assert wait_for(lambda: post(gw, CHAT_BODY).status_code == 200, timeout=5)
            status = httpx.get(f"{gw.url}/status").json()
            assert status["backends"][0]["circuit"] == "closed"


def test_a_400_from_the_backend_does_not_open_the_breaker(gw):
    for _ in range(5):
        response = post(gw, {**CHAT_BODY, "max_tokens": 100000})
        assert response.status_code == 400
    status = httpx.get(f"{gw.url}/status").json()
    assert {b["name"]: b["circuit"] for b in status["backends"]}["chat"] == "closed"
    assert post(gw, CHAT_BODY).status_code == 200


def test_total_timeout_caps_a_slow_stream(chat_sim):
    with gateway({"name": "chat", "url": chat_sim.url, "timeouts": {"total": 0.3}}) as gw:
        with httpx.stream("POST", f"{gw.url}/v1/chat/completions",
                          json={**CHAT_BODY, "stream": True, "max_tokens": 200}, timeout=10) as response:
            events = [line for line in response.iter_lines() if line.startswith("data: ")]
        assert "timeouts.total" in events[-2] and events[-1] == "data: [DONE]"
        assert len(events) < 100


async def _mark_ready(backend) -> None:
    backend.health.passed(backend.epoch)  # what the health monitor writes when a probe passes
    backend.breaker.record_success()


def test_refusals_for_a_down_backend_are_counted_under_its_model():
    port = closed_port()
    with gateway({"name": "dead", "url": f"http://127.0.0.1:{port}", "models": ["gone"]}, health_check_interval=60) as gw:
        assert post(gw, {"model": "gone", "input": "x"}, path="/v1/embeddings").status_code == 503
        page = httpx.get(f"{gw.url}/metrics").text
        assert 'gateway_requests_total{backend="dead",endpoint="/v1/embeddings",model="gone",status="503"} 1.0' in page
