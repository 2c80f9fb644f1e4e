"""LoRA adapters loaded on first use, against simulated vLLM servers with vLLM's runtime LoRA routes
(`app/simulator/lora.py`), through the official openai SDK.

Each simulator reads real adapter folders (`write_adapter`), answers each adapter with words of its
own, and records every load and unload in `/_sim/stats`, which is what most checks read.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.servers import Running, gateway, running, sim_stats, simulator, wait_for
from vllm_gateway.simulator import write_adapter

MESSAGES = [{"role": "user", "content": "hi"}]
ROOT = str(Path(__file__).resolve().parents[2])


@pytest.fixture
def folders(tmp_path: Path) -> dict[str, str]:
    return {name: str(write_adapter(tmp_path / name, rank=8)) for name in ("a", "b", "c")}


def lora_sim(**options: Any) -> Any:
    options.setdefault("max_loras", 2)
    return simulator(["base"], runtime_lora_updating=True, enable_lora=True, **options)


def backend(url: str | list[str], adapters: dict[str, str], limit: int = 4, **extra: Any) -> dict[str, Any]:
    where = {"urls": url} if isinstance(url, list) else {"url": url}
    return {"name": "chat", **where, "models": ["base"], "adapters": adapters, "max_loaded_adapters": limit, **extra}


def sdk(gw: Running, **options: Any) -> OpenAI:
    return OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0, **options)


def ask(client: OpenAI, model: str, **options: Any) -> str:
    answer = client.chat.completions.create(model=model, messages=MESSAGES, max_tokens=4, **options)
    assert answer.model == model
    return answer.choices[0].message.content or ""


def loads(sim_url: str) -> list[tuple[str, int]]:
    return [(r["name"], r["status"]) for r in sim_stats(sim_url)["lora_loads"] if r["kind"] == "load"]


def unloads(sim_url: str) -> list[str]:
    return [r["name"] for r in sim_stats(sim_url)["lora_unloads"]]


def backend_models(sim_url: str) -> list[str]:
    return [card["id"] for card in httpx.get(f"{sim_url}/v1/models").json()["data"]]


def adapter_status(gw: Running) -> dict[str, Any]:
    status: dict[str, Any] = httpx.get(f"{gw.url}/status").json()["backends"][0]["adapters"]
    return status


def sample(gw: Running, line_start: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics").text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no sample {line_start}")


def test_every_adapter_is_listed_loaded_on_first_use_and_answers_as_itself(folders: dict[str, str]) -> None:
    with running(lora_sim()) as sim, gateway(backend(sim.url, folders)) as gw:
        client = sdk(gw)
        cards = {m.id: m for m in client.models.list().data}
        assert list(cards) == ["base", "a", "b", "c"]
        assert {cards[n].parent for n in "abc"} == {"base"}  # type: ignore[attr-defined]  # vLLM's extra field
        assert backend_models(sim.url) == ["base"]  # nothing loaded before use
        first = ask(client, "a")
        assert backend_models(sim.url) == ["base", "a"]
        answers = {"a": first, "b": ask(client, "b"), "base": ask(client, "base")}
        assert len(set(answers.values())) == 3  # each adapter answers with its own weights
        assert ask(client, "a") == first
        assert loads(sim.url) == [("a", 200), ("b", 200)]  # once each
        assert sample(gw, 'gateway_adapter_loads_total{adapter="a",backend="chat"}') == 1
        assert sample(gw, 'gateway_adapter_loads_total{adapter="c",backend="chat"}') == 0  # declared at start
        assert sample(gw, 'gateway_adapters_loaded{backend="chat"}') == 2
        assert sample(gw, 'gateway_adapter_load_duration_seconds_count{backend="chat"}') == 2
        page = httpx.get(f"{gw.url}/metrics").text
        assert 'vllm:lora_requests_info{backend="chat",max_lora="2"' in page  # vLLM's own, passed through
        status = adapter_status(gw)
        assert status["addresses"][0]["loaded"] == ["b", "a"] and status["max_loaded_adapters"] == 4  # LRU first


def test_many_concurrent_requests_for_an_unloaded_adapter_cause_one_load(folders: dict[str, str]) -> None:
    with running(lora_sim(lora_load_delay=0.3)) as sim, gateway(backend(sim.url, folders)) as gw:
        client = openai.AsyncOpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)

        async def main() -> list[str]:
            calls = [client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=2) for _ in range(24)]
            return [r.model for r in await asyncio.gather(*calls)]

        assert asyncio.run(main()) == ["a"] * 24
        assert loads(sim.url) == [("a", 200)]
        assert adapter_status(gw)["addresses"][0]["in_flight"] == {}  # every request released it


def test_past_the_limit_the_least_recently_used_idle_adapter_is_unloaded(folders: dict[str, str]) -> None:
    with running(lora_sim()) as sim, gateway(backend(sim.url, folders, limit=2)) as gw:
        client = sdk(gw)
        ask(client, "a")
        ask(client, "b")
        ask(client, "a")  # b is now the least recently used
        ask(client, "c")
        assert wait_for(lambda: unloads(sim.url) == ["b"])
        assert backend_models(sim.url) == ["base", "a", "c"]
        ask(client, "b")
        assert wait_for(lambda: unloads(sim.url) == ["b", "a"])
        assert adapter_status(gw)["addresses"][0]["loaded"] == ["c", "b"]
        assert sample(gw, 'gateway_adapter_unloads_total{adapter="b",backend="chat"}') == 1


def test_an_adapter_with_a_request_in_flight_is_never_unloaded(folders: dict[str, str]) -> None:
    with running(lora_sim()) as sim, gateway(backend(sim.url, folders, limit=1)) as gw:
        client = sdk(gw)
        stream = client.chat.completions.create(model="a", messages=MESSAGES, max_tokens=3, stream=True,
                                                extra_headers={"x-sim-fault": "hold"})
        assert wait_for(lambda: sim_stats(sim.url)["held"] == 1)  # `a` is loaded and generating, parked
        assert ask(client, "b")  # loaded over the limit rather than unloading the busy `a`
        assert wait_for(lambda: unloads(sim.url) == ["b"])  # the idle one goes back under it
        assert "a" in backend_models(sim.url)
        httpx.post(f"{sim.url}/_sim/release")
        assert all(chunk.model == "a" for chunk in stream)
        assert adapter_status(gw)["addresses"][0]["loaded"] == ["a"]
        assert loads(sim.url) == [("a", 200), ("b", 200)] and unloads(sim.url) == ["b"]


def test_alternating_adapters_with_room_for_one_unload_and_load_and_answer_right(folders: dict[str, str]) -> None:
    with running(lora_sim(max_loras=1)) as sim, gateway(backend(sim.url, folders, limit=1)) as gw:
        client = sdk(gw)
        alone = {name: ask(client, name) for name in ("a", "b")}
        for name in ["a", "b"] * 3:
            assert ask(client, name) == alone[name]
        assert [name for name, _ in loads(sim.url)] == ["a", "b"] * 4
        assert wait_for(lambda: len(unloads(sim.url)) == 7)


def test_replicas_prefer_the_one_holding_the_adapter(folders: dict[str, str]) -> None:
    with running(lora_sim()) as one, running(lora_sim()) as two, gateway(backend([one.url, two.url], folders)) as gw:
        client = sdk(gw)
        for _ in range(6):
            ask(client, "a")  # without affinity, requests that do not overlap alternate between replicas
        assert len(loads(one.url)) + len(loads(two.url)) == 1
        holder, other = (one, two) if loads(one.url) else (two, one)
        assert sim_stats(holder.url)["completed"] == 6 and sim_stats(other.url)["completed"] == 0
        for _ in range(4):
            ask(client, "base")  # plain requests still spread over both
        assert sim_stats(other.url)["completed"] == 2
        by_url = {a["url"]: a["loaded"] for a in adapter_status(gw)["addresses"]}
        assert by_url == {holder.url: ["a"], other.url: []}


def test_a_refused_load_answers_vllms_reason_is_not_retried_per_request_and_is_tried_again_later(
        tmp_path: Path, folders: dict[str, str]) -> None:
    adapters = {**folders, "missing": str(tmp_path / "nowhere"), "wide": str(write_adapter(tmp_path / "wide", rank=32))}
    with running(lora_sim(max_lora_rank=16)) as sim, gateway(backend(sim.url, adapters)) as gw:
        gw.app.state.forwarding.adapters.failure_memory = 0.5
        client = sdk(gw)
        for _ in range(3):
            with pytest.raises(openai.NotFoundError) as missing:
                ask(client, "missing")
        error = missing.value.body
        assert isinstance(error, dict) and error["code"] == "adapter_not_found" and error["param"] == "model"
        assert "No adapter found for" in error["message"] and "adapters.missing" in error["message"]
        with pytest.raises(openai.BadRequestError) as wide:
            ask(client, "wide")
        assert "LoRA rank 32 is greater than max_lora_rank 16" in str(wide.value)
        assert loads(sim.url) == [("missing", 404), ("wide", 500)]  # three requests, one load
        assert ask(client, "a")  # other adapters are unaffected
        assert sample(gw, 'gateway_adapter_load_failures_total{adapter="missing",backend="chat"}') == 1
        assert adapter_status(gw)["failed"]["missing"]["error"].startswith("Loading lora missing failed")
        # A simulated failure of an adapter that is fine: remembered, then tried again after the memory.
        httpx.post(f"{sim.url}/_sim/faults", json={"lora_load": "fail"})
        with pytest.raises(openai.BadRequestError, match="simulated failure"):
            ask(client, "b")
        with pytest.raises(openai.BadRequestError):
            ask(client, "b")
        assert wait_for(lambda: "b" not in adapter_status(gw)["failed"], timeout=3)
        assert ask(client, "b")
        assert [name for name, _ in loads(sim.url)].count("b") == 2


def test_a_load_that_hangs_times_out_the_request_and_one_load_serves_the_next(folders: dict[str, str]) -> None:
    with running(lora_sim()) as sim, gateway(backend(sim.url, folders, timeouts={"response_head": 0.5})) as gw:
        httpx.post(f"{sim.url}/_sim/faults", json={"lora_load": "hang"})
        client = sdk(gw)
        for _ in range(2):  # the second joins the same load rather than starting another
            with pytest.raises(openai.APIStatusError) as timed_out:
                ask(client, "a")
            assert timed_out.value.status_code == 504
            assert "was not loaded" in str(timed_out.value)
        assert len(loads(sim.url)) == 1
        httpx.post(f"{sim.url}/_sim/release")
        assert wait_for(lambda: adapter_status(gw)["addresses"][0]["loaded"] == ["a"])
        assert ask(client, "a")
        assert len(loads(sim.url)) == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_an_external_backend_that_restarted_gets_its_adapter_loaded_again(folders: dict[str, str]) -> None:
    port = free_port()
    with running(lora_sim(), port=port) as sim, gateway(backend(sim.url, folders)) as gw:
        client = sdk(gw)
        before = ask(client, "a")
        with restarted(sim, port) as fresh:  # the same address, a new process that holds nothing
            assert backend_models(fresh.url) == ["base"]
            assert ask(client, "a") == before  # the 404 made the gateway load it again, once
            assert loads(fresh.url) == [("a", 200)]
            assert sample(gw, 'gateway_adapter_loads_total{adapter="a",backend="chat"}') == 2


@contextlib.contextmanager
def restarted(old: Running, port: int) -> Iterator[Running]:
    """Stop `old` and start a fresh simulator on the same port."""
    old.uvicorn.should_exit = True

    def gone() -> bool:
        try:
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=0.2)
        except httpx.HTTPError:
            return True
        return False

    assert wait_for(gone, timeout=10)
    with running(lora_sim(), port=port) as fresh:
        yield fresh


def test_a_launched_backend_that_restarts_loads_its_adapters_again_on_demand(folders: dict[str, str]) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    launched = {
        "name": "chat", "url": url, "models": ["base"], "adapters": folders,
        "launch": {"model": "base", "command": [sys.executable, "-m", "vllm_gateway", "simulate", "--model", "{model}"],
                   "args": ["--enable-lora", "--max-loras", "2", "--lora-modules", f"pinned={folders['c']}"],
                   "env": {"PYTHONPATH": ROOT}, "restart_backoff_initial": 0.2, "stop_timeout": 5},
    }
    with gateway(launched) as gw:
        assert wait_for(lambda: httpx.get(f"{gw.url}/status").json()["backends"][0]["state"] == "ready", timeout=30)
        client = sdk(gw)
        before = ask(client, "a")
        assert ask(client, "pinned")  # loaded by vLLM at start; counted, never unloaded
        status = adapter_status(gw)
        assert status["max_loaded_adapters"] == 2 and status["addresses"][0]["loaded"] == ["pinned", "a"]
        pid = httpx.get(f"{gw.url}/status").json()["backends"][0]["pid"]
        os.killpg(pid, signal.SIGKILL)
        assert wait_for(lambda: httpx.get(f"{gw.url}/status").json()["backends"][0]["restarts"] == 1, timeout=30)
        assert wait_for(lambda: httpx.get(f"{gw.url}/status").json()["backends"][0]["state"] == "ready", timeout=30)
        assert ask(client, "a") == before  # never a 404 because of the restart
        assert ask(client, "b")
        assert sample(gw, 'gateway_adapter_loads_total{adapter="a",backend="chat"}') == 2
        assert wait_for(lambda: adapter_status(gw)["addresses"][0]["loaded"] == ["pinned", "b"])  # limit 2: a went


def test_another_404_for_an_adapter_is_relayed_in_openai_shape_without_a_reload(folders: dict[str, str]) -> None:
    with running(lora_sim()) as sim, gateway(backend(sim.url, folders)) as gw:
        client = sdk(gw)
        ask(client, "a")
        with pytest.raises(openai.NotFoundError) as unsupported:
            client.embeddings.create(model="a", input="x")  # a chat model: vLLM has no such route
        assert isinstance(unsupported.value.body, dict) and unsupported.value.body["code"] == "unsupported_endpoint"
        assert loads(sim.url) == [("a", 200)]
