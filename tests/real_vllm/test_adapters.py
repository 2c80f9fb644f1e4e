"""LoRA adapters against real vLLM: loaded by the gateway on first use, each answering exactly as
vLLM answers when the adapter is loaded into it directly, and swapped in and out with room for one.

A gateway of its own (one start-up of tiny-chat, ~30 s on 2 cores, then a few seconds of
requests) launches tiny-chat with `--enable-lora --max-loras 1 --max-cpu-loras 2 --max-lora-rank 8`
and `max_loaded_adapters: 1`. The adapters are PEFT's, made by `tiny_adapters.py` (seeded): lora-a
and lora-b (rank 8, different weights), lora-wide (rank 16, above the server's limit), and one
whose folder does not exist. The reference answers come from the same vLLM process, with the
same adapter folders loaded through vLLM's own route under other names, bypassing the gateway.
"""

from __future__ import annotations

import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml
from openai import OpenAI

from tests.real_vllm.conftest import (
    CACHE,
    ROOT,
    LiveGateway,
    _backend,
    _free_port,
    _gateway_command,
    _run,
    _stop,
    _vllm_python,
    _wait_ready,
)

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

MESSAGES = [{"role": "user", "content": "Tell me about the gateway and its models."}]
GREEDY: dict[str, Any] = {"temperature": 0, "max_tokens": 16}
LORA_ARGS = ["--enable-lora", "--max-loras", "1", "--max-cpu-loras", "2", "--max-lora-rank", "8"]


@pytest.fixture(scope="module")
def adapters_dir() -> Path:
    python = _vllm_python()
    models = CACHE / "models"
    _run([python, str(ROOT / "tests" / "real_vllm" / "tiny_models.py"), str(models), "--only", "tiny-chat"],
         "building tiny-chat", 600)
    _run([python, str(ROOT / "tests" / "real_vllm" / "tiny_adapters.py"), str(models)], "building the tiny adapters", 600)
    return models / "tiny-chat-adapters"


@pytest.fixture(scope="module")
def gw(adapters_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    workdir = tmp_path_factory.mktemp("real-vllm-adapters")
    chat = _backend("chat", CACHE / "models" / "tiny-chat", _vllm_python(), 0, workdir)
    chat["launch"]["args"] += LORA_ARGS
    chat["launch"]["warmup"] = False
    chat["adapters"] = {"lora-a": str(adapters_dir / "lora-a"), "lora-b": str(adapters_dir / "lora-b"),
                        "lora-wide": str(adapters_dir / "lora-wide"), "lora-missing": str(adapters_dir / "missing")}
    chat["max_loaded_adapters"] = 1
    port = _free_port()
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "health_check_interval": 1.0,
                                      "shutdown_grace": 5, "backends": [chat]}))
    log = workdir / "gateway.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*_gateway_command(), "serve", "--config", str(config)], cwd=ROOT, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    live = LiveGateway(f"http://127.0.0.1:{port}", proc, log, {"chat": chat["url"]}, workdir)
    try:
        _wait_ready(live)
        live.started_s = time.monotonic() - started
        print(f"\n[real-vllm adapters] gateway with tiny-chat (LoRA enabled) ready after {live.started_s:.1f} s",
              file=sys.stderr)
        yield live
    finally:
        _stop(live)


def backend_models(gw: LiveGateway) -> list[str]:
    return [c["id"] for c in httpx.get(f"{gw.backend_urls['chat']}/v1/models", timeout=10).json()["data"]]


def answer(client: OpenAI, model: str) -> str:
    reply = client.chat.completions.create(model=model, messages=MESSAGES, **GREEDY)  # type: ignore[arg-type]
    assert reply.model == model
    return reply.choices[0].message.content or ""


@pytest.fixture(scope="module")
def direct(gw: LiveGateway, adapters_dir: Path) -> dict[str, str]:
    """Each adapter's answer with the folder loaded into vLLM through its own route, not the gateway."""
    url = gw.backend_urls["chat"]
    vllm = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)
    found = {"base": answer(vllm, "tiny-chat")}
    for name in ("lora-a", "lora-b"):
        loaded = httpx.post(f"{url}/v1/load_lora_adapter", timeout=60,
                            json={"lora_name": f"direct-{name}", "lora_path": str(adapters_dir / name)})
        assert loaded.status_code == 200, loaded.text
        found[name] = answer(vllm, f"direct-{name}")
        assert httpx.post(f"{url}/v1/unload_lora_adapter", json={"lora_name": f"direct-{name}"}).status_code == 200
    assert len(set(found.values())) == 3, f"the adapters do not change the answer: {found}"
    return found


def metric(gw: LiveGateway, line_start: str) -> float:
    for line in httpx.get(f"{gw.url}/metrics", timeout=10).text.splitlines():
        if line.startswith(line_start):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no {line_start} on the gateway's /metrics")


def test_adapters_load_on_first_use_and_answer_as_when_loaded_directly(gw: LiveGateway, direct: dict[str, str]) -> None:
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    cards = {m.id: m.model_dump() for m in client.models.list().data}
    assert {"lora-a", "lora-b"} <= set(cards) and cards["lora-a"]["parent"] == "tiny-chat"
    assert backend_models(gw) == ["tiny-chat"]  # nothing loaded before first use
    assert answer(client, "lora-a") == direct["lora-a"]
    assert backend_models(gw) == ["tiny-chat", "lora-a"]
    stream = client.chat.completions.create(model="lora-b", messages=MESSAGES, stream=True, **GREEDY)  # type: ignore[arg-type]
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices) == direct["lora-b"]
    assert answer(client, "tiny-chat") == direct["base"]
    status = {b["name"]: b for b in httpx.get(f"{gw.url}/status", timeout=10).json()["backends"]}["chat"]["adapters"]
    assert status["max_loaded_adapters"] == 1 and status["addresses"][0]["loaded"] == ["lora-b"]
    page = httpx.get(f"{gw.url}/metrics", timeout=10).text
    assert re.search(r'^vllm:lora_requests_info\{backend="chat",max_lora="1",', page, re.M)  # vLLM's, passed through


def test_with_room_for_one_alternating_requests_swap_adapters_and_answer_right(gw: LiveGateway,
                                                                               direct: dict[str, str]) -> None:
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    loads_before = metric(gw, 'gateway_adapter_loads_total{adapter="lora-a",backend="chat"}')
    for name in ["lora-a", "lora-b"] * 3:
        assert answer(client, name) == direct[name]
        assert name in backend_models(gw)
    deadline = time.monotonic() + 10
    while len([m for m in backend_models(gw) if m.startswith("lora-")]) != 1 and time.monotonic() < deadline:
        time.sleep(0.1)  # the idle one is unloaded just after the other loaded
    assert [m for m in backend_models(gw) if m.startswith("lora-")] == ["lora-b"]
    assert metric(gw, 'gateway_adapter_loads_total{adapter="lora-a",backend="chat"}') == loads_before + 3
    assert metric(gw, 'gateway_adapter_unloads_total{adapter="lora-a",backend="chat"}') >= 3
    count = metric(gw, 'gateway_adapter_load_duration_seconds_count{backend="chat"}')
    total = metric(gw, 'gateway_adapter_load_duration_seconds_sum{backend="chat"}')
    took = [float(t) for t in re.findall(r"loaded adapter '[^']+' in ([0-9.]+) s", gw.log_text())]
    print(f"\n[real-vllm adapters] {count:.0f} loads of a rank-8 adapter into tiny-chat on CPU: mean {1000 * total / count:.1f} ms, "
          f"min {1000 * min(took):.1f} ms, max {1000 * max(took):.1f} ms", file=sys.stderr)


def test_adapters_vllm_refuses_answer_its_reason_once_and_from_memory_after(gw: LiveGateway) -> None:
    client = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
    for _ in range(2):
        with pytest.raises(openai.BadRequestError) as wide:
            answer(client, "lora-wide")
        assert "LoRA rank 16 is greater than max_lora_rank 8" in str(wide.value)
        with pytest.raises(openai.NotFoundError) as missing:
            answer(client, "lora-missing")
        body = missing.value.body
        assert isinstance(body, dict) and body["code"] == "adapter_not_found" and "No adapter found" in body["message"]
    for name in ("lora-wide", "lora-missing"):
        assert metric(gw, f'gateway_adapter_load_failures_total{{adapter="{name}",backend="chat"}}') == 1
    assert answer(client, "tiny-chat")  # the backend serves on
