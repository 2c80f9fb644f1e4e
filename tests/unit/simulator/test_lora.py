"""`lora.py` (with `adapters.py`, `models.py`): runtime LoRA as the recorded real vLLM 0.32.0 answered it."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from vllm_gateway.simulator import LoRAModule, Simulator, SimulatorConfig, shapes

from .captures import make_adapters, record, replay

Steps = Callable[[httpx.AsyncClient, Simulator], Awaitable[None]]


@pytest.fixture
def adapters(tmp_path: Path) -> Path:
    return make_adapters(tmp_path / "adapters")


def recorded_server(adapters: Path, **extra: Any) -> Simulator:
    """The recorded server's settings (its CPU build words worker errors as executor backend mp)."""
    config: dict[str, Any] = {
        "models": ["tiny-chat"], "runtime_lora_updating": True, "enable_lora": True, "max_loras": 1,
        "max_lora_rank": 16, "max_cpu_loras": 2, "executor_backend": "mp",
        "lora_modules": [LoRAModule("static1", str(adapters / "good8"))], **extra}
    return Simulator(SimulatorConfig(**config))


def run(sim: Simulator, steps: Steps) -> None:
    async def main() -> None:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=sim), base_url="http://sim", timeout=30) as c:
            await steps(c, sim)

    asyncio.run(main())


def chat(model: str, max_tokens: int = 4) -> dict[str, Any]:
    return {"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": max_tokens}


def load(name: str, path: Path | str, **extra: Any) -> dict[str, Any]:
    return {"lora_name": name, "lora_path": str(path), **extra}


REFUSED = ["load_empty", "load_name_only", "load_blank", "load_int_name", "load_text_plain", "load_nonexistent",
           "load_relative_missing", "load_rank64", "load_broken", "load_noweights", "load_missing_fields", "load_dora",
           "load_biased", "load_rank0", "load_emptydir", "load_afile", "load_home_path", "load_srv_relative"]


def test_every_refused_load_is_answered_as_recorded(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        for name in REFUSED:
            await replay(c, name, adapters)
        assert [card["id"] for card in (await c.get("/v1/models")).json()["data"]] == ["tiny-chat", "static1"]

    run(recorded_server(adapters), steps)


def test_loads_unloads_and_the_model_list_go_as_recorded(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        for name in ("load_a1", "load_a1_again", "load_a1_inplace", "load_clash"):
            await replay(c, name, adapters)
        cards = [(m["id"], m["root"], m["parent"], m["max_model_len"]) for m in (await c.get("/v1/models")).json()["data"]]
        recorded = [(m["id"], m["root"].replace("/tmp/simwork/adapters", str(adapters)), m["parent"], m["max_model_len"])
                    for m in record("models_with_a1")["json"]["data"]]
        assert cards[1:] == recorded[1:]  # the base card's root is the model folder of the recorded server
        for name in ("chat_unknown", "load_a2", "load_a3", "unload_a1", "unload_a1_again", "unload_empty",
                     "unload_blank", "unload_with_id", "chat_a1_unloaded", "unload_get_405"):
            await replay(c, name, adapters)
        names = [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
        assert names == [m["id"] for m in record("models_end")["json"]["data"]] == ["tiny-chat", "static1", "a3"]

    run(recorded_server(adapters), steps)


def test_worker_errors_on_one_gpu_are_not_wrapped(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        answer = await c.post("/v1/load_lora_adapter", json=load("big", adapters / "rank64"))
        assert answer.status_code == 500
        assert answer.json()["error"]["message"] == ("Call to add_lora method failed: LoRA rank 64 is greater than "
                                                     "max_lora_rank 16.")

    run(recorded_server(adapters, executor_backend="uni"), steps)


def test_without_enable_lora_a_load_is_vllms_500_and_unload_finds_nothing(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        await replay(c, "plain_load_no_enable_lora", adapters)
        await replay(c, "plain_unload_no_enable_lora", adapters)
        assert "vllm:lora_requests_info" not in (await c.get("/metrics")).text

    run(Simulator(SimulatorConfig(models=["tiny-chat"], runtime_lora_updating=True, executor_backend="mp")), steps)


def test_without_runtime_updating_the_routes_do_not_exist(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        for path in ("/v1/load_lora_adapter", "/v1/unload_lora_adapter"):
            answer = await c.post(path, json=load("a1", adapters / "good8"))
            assert (answer.status_code, answer.text) == (404, '{"detail":"Not Found"}')

    run(Simulator(SimulatorConfig(models=["tiny-chat"], enable_lora=True)), steps)


def test_each_adapter_answers_under_its_name_with_words_of_its_own(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        await c.post("/v1/load_lora_adapter", json=load("a1", adapters / "good8"))
        await c.post("/v1/load_lora_adapter", json=load("a2", adapters / "good8b"))
        texts = {}
        for model in ("tiny-chat", "a1", "a2", "static1"):
            body = (await c.post("/v1/chat/completions", json=chat(model, 6))).json()
            assert body["model"] == model
            texts[model] = body["choices"][0]["message"]["content"]
        assert len(set(texts.values())) == 4
        assert texts["a1"] == shapes.text(shapes.vocabulary("a1"), 6)
        assert texts["tiny-chat"] == "".join(shapes.word(i) for i in range(6))
        completion = (await c.post("/v1/completions", json={"model": "a2", "prompt": "hi", "max_tokens": 6})).json()
        assert completion["model"] == "a2" and completion["choices"][0]["text"] == texts["a2"]

    run(recorded_server(adapters, max_cpu_loras=4), steps)


def test_an_adapter_pushed_out_of_cpu_memory_is_read_again_when_asked_for(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        for name, folder in (("a1", "good8"), ("a2", "good8b"), ("a3", "good8c")):  # 2 fit: static1, then a1 go
            assert (await c.post("/v1/load_lora_adapter", json=load(name, adapters / folder))).status_code == 200
        kept = {a["name"]: a["in_cpu_memory"] for a in (await c.get("/_sim/stats")).json()["lora_adapters"]}
        assert kept == {"static1": False, "a1": False, "a2": True, "a3": True}
        assert (await c.post("/v1/chat/completions", json=chat("a1"))).json()["model"] == "a1"  # as recorded
        loads = [(r["name"], r["kind"], r["status"]) for r in (await c.get("/_sim/stats")).json()["lora_loads"]]
        assert loads == [("static1", "static", 200), ("a1", "load", 200), ("a2", "load", 200), ("a3", "load", 200),
                         ("a1", "reload", 200)]
        kept = {a["name"]: a["in_cpu_memory"] for a in (await c.get("/_sim/stats")).json()["lora_adapters"]}
        assert kept == {"static1": False, "a1": True, "a2": False, "a3": True}  # a1 came back, a2 made room
        (adapters / "good8c" / "adapter_config.json").unlink()  # a3 is in memory: no disk read needed
        assert (await c.post("/v1/chat/completions", json=chat("a3"))).status_code == 200
        (adapters / "good8b" / "adapter_config.json").unlink()  # a2 must be read again, and is gone from disk
        gone = await c.post("/v1/chat/completions", json=chat("a2"))
        assert gone.status_code == 404 and "No adapter found" in gone.json()["error"]["message"]

    run(recorded_server(adapters), steps)


def test_at_most_max_loras_adapters_run_at_once_the_others_wait(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        await c.post("/v1/load_lora_adapter", json=load("a1", adapters / "good8"))
        first = asyncio.create_task(c.post("/v1/chat/completions", json=chat("a1", 20)))
        engine = sim.parts.engine
        async with asyncio.timeout(10):
            while not engine.running:
                await asyncio.sleep(0.005)
        second = asyncio.create_task(c.post("/v1/chat/completions", json=chat("static1", 2)))
        same = asyncio.create_task(c.post("/v1/chat/completions", json=chat("a1", 10)))
        async with asyncio.timeout(10):
            while len(engine.jobs) < 3:
                await asyncio.sleep(0.001)
        assert [(j.adapter, j.started) for j in engine.jobs] == [("a1", True), ("static1", False), ("a1", True)]
        page = (await c.get("/metrics")).text
        assert 'vllm:lora_requests_info{max_lora="1",running_lora_adapters="a1,static1",waiting_lora_adapters="a1,static1"}' in page
        for task in (first, second, same):
            assert (await task).status_code == 200
        assert record("two_adapters_at_once")["overlap"] is False  # the recorded vLLM ran them one after the other

    run(recorded_server(adapters, token_delay=0.005), steps)


def test_static_adapters_need_enable_lora_and_a_folder_as_vllm_does_at_start(adapters: Path) -> None:
    module = [LoRAModule("s", str(adapters / "good8"))]
    with pytest.raises(ValueError, match="LoRA is not enabled. Use --enable-lora to enable LoRA."):
        Simulator(SimulatorConfig(models=["m"], lora_modules=module))
    with pytest.raises(ValueError, match="No adapter found for"):
        Simulator(SimulatorConfig(models=["m"], enable_lora=True, lora_modules=[LoRAModule("s", "/nowhere/x")]))
    with pytest.raises(ValueError, match="conflicts with a served base model"):
        Simulator(SimulatorConfig(models=["m"], enable_lora=True, lora_modules=[LoRAModule("m", str(adapters / "good8"))]))
    with pytest.raises(ValueError, match="greater than max_lora_rank 8"):
        Simulator(SimulatorConfig(models=["m"], enable_lora=True, max_lora_rank=8,
                                  lora_modules=[LoRAModule("s", str(adapters / "rank64"))]))
    sim = Simulator(SimulatorConfig(models=["m", "m2"], enable_lora=True,
                                    lora_modules=[LoRAModule("s", str(adapters / "good8"), base_model_name="m2")]))
    assert [(c["id"], c["parent"]) for c in sim.parts.models.cards()] == [("m", None), ("m2", None), ("s", "m2")]


def test_a_load_takes_the_configured_time_and_faults_make_it_fail_or_hang(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        started = asyncio.get_running_loop().time()
        assert (await c.post("/v1/load_lora_adapter", json=load("a1", adapters / "good8"))).status_code == 200
        assert asyncio.get_running_loop().time() - started >= 0.1
        await c.post("/_sim/faults", json={"lora_load": "fail"})
        failed = await c.post("/v1/load_lora_adapter", json=load("a2", adapters / "good8b"))
        assert failed.status_code == 500 and failed.json()["error"]["type"] == "InternalServerError"
        assert "a2" not in [m["id"] for m in (await c.get("/v1/models")).json()["data"]]
        await c.post("/_sim/faults", json={"lora_load": "hang"})
        hanging = asyncio.create_task(c.post("/v1/load_lora_adapter", json=load("a2", adapters / "good8b")))
        async with asyncio.timeout(10):
            while sim.state.held == 0:
                await asyncio.sleep(0.005)
        assert not hanging.done()
        await c.post("/_sim/release")
        assert (await hanging).status_code == 200
        statuses = [(r["name"], r["status"]) for r in (await c.get("/_sim/stats")).json()["lora_loads"]]
        assert statuses == [("a1", 200), ("a2", 500), ("a2", 200)]

    run(Simulator(SimulatorConfig(models=["tiny-chat"], runtime_lora_updating=True, enable_lora=True,
                                  lora_load_delay=0.1)), steps)


def test_the_lora_routes_sit_behind_the_api_key(adapters: Path) -> None:
    async def steps(c: httpx.AsyncClient, sim: Simulator) -> None:
        refused = await c.post("/v1/load_lora_adapter", json=load("a1", adapters / "good8"))
        assert (refused.status_code, refused.text) == (401, '{"error":"Unauthorized"}')
        ok = await c.post("/v1/load_lora_adapter", json=load("a1", adapters / "good8"),
                          headers={"authorization": "Bearer k"})
        assert ok.status_code == 200 and "content-type" not in ok.headers  # vLLM's plain Response

    run(Simulator(SimulatorConfig(models=["tiny-chat"], runtime_lora_updating=True, enable_lora=True, api_key="k")),
        steps)
