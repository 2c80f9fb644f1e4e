"""A client that goes away makes the backend see the disconnect at once, so vLLM aborts the
generation and frees its KV cache: mid-stream, and while a non-streaming generation is running.

The simulated backend generates one token every 50 ms and is asked for thousands, so a generation
would run for minutes: seeing `disconnects` go up and `running` drop to zero within two seconds
can only mean the gateway closed its upstream connection.
"""

from __future__ import annotations

import random
import re

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers import CHAT, gateway, running, simulator, wait_for

MODEL = "slow-chat"
MESSAGES = [{"role": "user", "content": "write a very long story"}]
LONG = 3000  # tokens: 150 s of generation at 50 ms per token
PROMPT = 2.0  # seconds within which the backend must have seen the disconnect


@pytest.fixture(scope="module")
def slow_sim():
    with running(simulator([MODEL], CHAT, token_delay=0.05, max_model_len=8192)) as server:
        yield server


@pytest.fixture(scope="module")
def gw(slow_sim):
    with gateway({"name": "slow", "url": slow_sim.url}) as server:
        yield server


@pytest.fixture
def baseline(slow_sim, gw):
    """Counters before the test, once nothing is running on the backend."""
    state = slow_sim.app.state
    assert wait_for(lambda: state.running == 0, timeout=5)
    return {"disconnects": state.disconnects, "completed": state.completed, "metric": client_disconnects(gw)}


def metric(gw, pattern: str) -> float:
    page = httpx.get(f"{gw.url}/metrics", timeout=5).text
    found = re.search(rf"^{pattern} ([0-9.e+-]+)$", page, re.M)
    return float(found.group(1)) if found else 0.0


def client_disconnects(gw) -> float:
    return metric(gw, rf'gateway_client_disconnects_total\{{model="{MODEL}"\}}')


def in_flight(gw) -> float:
    return metric(gw, rf'gateway_requests_in_flight\{{(?=[^}}]*model="{MODEL}")[^}}]*\}}')


def assert_backend_saw(slow_sim, gw, baseline, count: int = 1) -> None:
    state = slow_sim.app.state
    expected = baseline["disconnects"] + count
    assert wait_for(lambda: state.disconnects == expected and state.running == 0, timeout=PROMPT), (
        f"backend still generating: disconnects={state.disconnects} (expected {expected}), running={state.running}")
    assert state.completed == baseline["completed"]
    assert wait_for(lambda: client_disconnects(gw) == baseline["metric"] + count, timeout=PROMPT)
    assert in_flight(gw) == 0


def test_streaming_client_closing_mid_stream_aborts_the_generation(slow_sim, gw, baseline) -> None:
    with OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        stream = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=LONG, stream=True)
        chunks = iter(stream)
        received = [next(chunks) for _ in range(4)]
        assert "".join(c.choices[0].delta.content or "" for c in received) == " the model gateway"
        # Chunks arrive while the backend is still generating: the gateway does not buffer the stream.
        assert slow_sim.app.state.running == 1 and slow_sim.app.state.completed == baseline["completed"]
        stream.close()
    assert_backend_saw(slow_sim, gw, baseline)


def test_non_streaming_client_timing_out_aborts_the_generation(slow_sim, gw, baseline) -> None:
    with OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):
            client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=LONG)
    assert_backend_saw(slow_sim, gw, baseline)


def test_raw_http_stream_closed_right_after_the_head(slow_sim, gw, baseline) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": LONG, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200
        assert wait_for(lambda: slow_sim.app.state.running == 1, timeout=5)
    assert_backend_saw(slow_sim, gw, baseline)


def test_raw_http_client_leaving_a_completion_before_its_head(slow_sim, gw, baseline) -> None:
    body = {"model": MODEL, "prompt": "long", "max_tokens": LONG}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{gw.url}/v1/completions", json=body, timeout=httpx.Timeout(5, read=0.4))
    assert_backend_saw(slow_sim, gw, baseline)


def test_dropped_streams_at_random_points_leave_nothing_running(slow_sim, gw, baseline) -> None:
    rng = random.Random(20261122)
    drops = 8
    with httpx.Client(timeout=30) as client:
        for i in range(drops):
            if i % 4 == 3:  # now and then a non-streaming one that the client gives up on
                with pytest.raises(httpx.ReadTimeout):
                    client.post(f"{gw.url}/v1/chat/completions", json={"model": MODEL, "messages": MESSAGES, "max_tokens": LONG},
                                timeout=httpx.Timeout(5, read=rng.uniform(0.25, 0.4)))
                continue
            body = {"model": MODEL, "messages": MESSAGES, "max_tokens": LONG, "stream": True,
                    "stream_options": {"include_usage": True}}
            with client.stream("POST", f"{gw.url}/v1/chat/completions", json=body) as response:
                wanted = rng.randint(0, 6)
                for n, _ in enumerate(response.iter_raw()):
                    if n >= wanted:
                        break
    assert_backend_saw(slow_sim, gw, baseline, count=drops)


def test_a_finished_request_is_not_counted_as_a_disconnect(slow_sim, gw, baseline) -> None:
    # The stream is read to its very end (the SDK hangs up at `data: [DONE]`, which races the
    # gateway's own end of response: see test_proxy.py::test_closing_after_done_is_not_a_client_disconnect).
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 3, "stream": True}
    with httpx.Client(timeout=30) as http:
        streamed = http.post(f"{gw.url}/v1/chat/completions", json=body)
    with OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, timeout=30) as client:
        reply = client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=2)
    assert streamed.text.count("data: ") == 5 and streamed.text.endswith("data: [DONE]\n\n")
    assert reply.choices[0].message.content == " the model"
    state = slow_sim.app.state
    assert wait_for(lambda: state.completed == baseline["completed"] + 2 and state.running == 0, timeout=5)
    assert state.disconnects == baseline["disconnects"]
    assert client_disconnects(gw) == baseline["metric"]
