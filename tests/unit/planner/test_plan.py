"""The plan per backend and per device: shares, auto targets, unknown models, several GPUs."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

from tests.unit.planner.published import FIXTURES, header_only_model
from vllm_gateway.planner.architecture import model_facts
from vllm_gateway.planner.kv_cache import kv_layout
from vllm_gateway.planner.plan import PlanError, build_plan, launch_flags, planned_backend
from vllm_gateway.settings import Settings
from vllm_gateway.supervise.process import command_line

GB = 10**9
L40S = 48 * GB
QWEN3_8B = str(FIXTURES / "qwen3-8b")
OFFLINE = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent/hub"}


def settings(*backends: dict[str, Any], budget: float = 0.9) -> Settings:
    return Settings(gpu={"memory_budget": budget}, backends=[
        {"name": (name := b.pop("name")), "models": [name], "url": f"http://127.0.0.1:{8000 + i}", "launch": b}
        for i, b in enumerate(backends)])


@pytest.fixture
def embed(tmp_path: Path) -> str:
    return str(header_only_model(tmp_path / "embed", "qwen3-embedding-0.6b"))


def qwen3_8b_kv():
    return kv_layout(model_facts(__import__("json").loads((FIXTURES / "qwen3-8b" / "config.json").read_text())).attention,
                     dtype_bytes=2, tensor_parallel=1, block_size=16)


def test_the_l40s_pair_fits_and_says_what_each_share_buys(embed: str) -> None:
    plan = build_plan(settings(
        {"name": "embed", "model": embed, "gpu_memory_utilization": 0.15, "max_model_len": 8192,
         "args": ["--runner", "pooling"]},
        {"name": "guard", "model": QWEN3_8B, "gpu_memory_utilization": 0.6, "max_model_len": 32768}),
        default_memory=L40S, env=OFFLINE)
    guard, em = plan.backend("guard"), plan.backend("embed")
    assert guard.status == em.status == "fits"
    assert guard.weights_bytes == 16381470720 and guard.weights_exact
    assert em.weights_bytes == 595776512 * 2
    assert guard.kv_bytes_per_token == 144 * 1024 and em.kv_bytes_per_token == 112 * 1024
    requested = math.ceil(0.6 * L40S)
    assert guard.kv_bytes == requested - guard.weights_bytes - guard.estimated_bytes and not guard.kv_exact
    layout = qwen3_8b_kv()
    assert guard.kv_tokens == layout.tokens(guard.kv_bytes)
    assert guard.sequences == 2  # 32k sequences: 4.5 GiB each
    (device,) = plan.devices
    assert device.reserved_bytes == math.ceil(0.15 * L40S) + requested
    assert device.budget_bytes == int(0.9 * L40S) and device.missing_bytes is None
    assert plan.refusals() == []


def test_auto_with_sequences_computes_the_share_and_the_exact_kv_bytes() -> None:
    plan = build_plan(settings({"name": "guard", "model": QWEN3_8B, "gpu_memory_utilization": "auto",
                                "max_model_len": 32768, "concurrent_sequences": 4}), default_memory=L40S, env=OFFLINE)
    guard = plan.backend("guard")
    kv = 4 * 2048 * qwen3_8b_kv().bytes_per_block  # 4 x 32768 tokens in 16-token blocks
    assert (guard.status, guard.kv_cache_memory_bytes, guard.kv_exact, guard.sequences) == ("fits", kv, True, 4)
    need = guard.weights_bytes + guard.estimated_bytes + kv  # type: ignore[operator]
    assert guard.share == math.ceil(need / L40S * 1000) / 1000
    assert math.ceil(guard.share * L40S) >= need
    assert launch_flags(guard) == ["--gpu-memory-utilization", f"{guard.share:g}", "--kv-cache-memory-bytes", str(kv)]


def test_the_planned_backend_launches_with_the_planned_flags() -> None:
    config = settings({"name": "guard", "model": QWEN3_8B, "gpu_memory_utilization": "auto", "max_model_len": 8192,
                       "kv_cache_tokens": 100_000, "args": ["--enable-prefix-caching"]})
    plan = build_plan(config, default_memory=L40S, env=OFFLINE).backend("guard")
    argv = command_line(planned_backend(config.backends[0], plan))
    kv = -(-100_000 // 16) * qwen3_8b_kv().bytes_per_block
    assert argv[argv.index("--gpu-memory-utilization") + 1] == f"{plan.share:g}"
    assert argv[-2:] == ["--kv-cache-memory-bytes", str(kv)] and "--enable-prefix-caching" in argv
    assert plan.kv_tokens == -(-100_000 // 16) * 16


def test_kv_cache_tokens_below_one_sequence_cannot_fit() -> None:
    plan = build_plan(settings({"name": "guard", "model": QWEN3_8B, "gpu_memory_utilization": "auto",
                                "max_model_len": 32768, "kv_cache_tokens": 1000}), default_memory=L40S, env=OFFLINE)
    guard = plan.backend("guard")
    assert guard.status == "does not fit" and "kv_cache_tokens 1000 cannot hold one 32768-token sequence" in guard.reason
    assert plan.refusals() == [f"backend guard: {guard.reason}"]


def test_a_share_that_cannot_hold_one_sequence_names_the_bytes_missing() -> None:
    plan = build_plan(settings({"name": "guard", "model": QWEN3_8B, "gpu_memory_utilization": 0.35,
                                "max_model_len": 32768}), default_memory=L40S, env=OFFLINE)
    guard = plan.backend("guard")
    requested = math.ceil(0.35 * L40S)
    missing = guard.weights_bytes + guard.estimated_bytes + 32768 * 144 * 1024 - requested  # type: ignore[operator]
    assert guard.status == "does not fit" and guard.missing_bytes == missing
    assert f"({missing:,} bytes) missing; raise the share or lower max_model_len" in guard.reason
    assert plan.refusals()[0].startswith("backend guard: share 0.35 of 44.70 GiB is 15.65 GiB")


def test_autos_that_overflow_the_device_budget_are_refused_naming_the_device() -> None:
    plan = build_plan(settings(
        {"name": "a", "model": QWEN3_8B, "gpu_memory_utilization": "auto", "max_model_len": 32768,
         "concurrent_sequences": 4},
        {"name": "b", "model": QWEN3_8B, "gpu_memory_utilization": "auto", "max_model_len": 32768,
         "concurrent_sequences": 4}), default_memory=L40S, env=OFFLINE)
    assert [b.status for b in plan.backends] == ["fits", "fits"]
    (line,) = plan.refusals()
    assert line.startswith("GPU 0: backends a, b reserve") and "over the budget of 40.23 GiB" in line


def test_an_unreadable_model_is_unknown_and_an_auto_one_gets_what_is_left() -> None:
    config = settings(
        {"name": "guard", "model": QWEN3_8B, "gpu_memory_utilization": 0.6, "max_model_len": 32768},
        {"name": "new", "model": "Qwen/Qwen3Guard-Gen-4B", "gpu_memory_utilization": "auto", "max_model_len": 8192,
         "concurrent_sequences": 2})
    plan = build_plan(config, default_memory=L40S, env=OFFLINE)
    new = plan.backend("new")
    assert new.status == "unknown" and "not in the Hugging Face cache" in new.reason
    assert "vLLM may download it at launch" in new.reason
    assert new.share == 0.3 and new.share_source == "auto: what is left of the budget"
    assert launch_flags(new) == ["--gpu-memory-utilization", "0.3"]  # no KV bytes: vLLM profiles within it
    assert plan.refusals() == []
    with pytest.raises(PlanError, match=r"^backend new: model files not readable"):
        build_plan(config, default_memory=L40S, env=OFFLINE, strict=True)


def test_a_config_without_needed_fields_is_unknown_naming_the_field(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32}')
    config = settings({"name": "x", "model": str(tmp_path), "gpu_memory_utilization": 0.5})
    assert "config.json has no num_hidden_layers" in build_plan(config, default_memory=L40S, env={}).backend("x").reason
    with pytest.raises(PlanError, match="backend x: .*no num_hidden_layers"):
        build_plan(config, default_memory=L40S, env={}, strict=True)


def test_tensor_parallel_is_planned_per_gpu_on_its_devices() -> None:
    plan = build_plan(settings({"name": "big", "model": QWEN3_8B, "gpu_memory_utilization": 0.5,
                                "max_model_len": 32768, "args": ["-tp", "2"], "env": {"CUDA_VISIBLE_DEVICES": "2,3"}}),
                      default_memory=L40S, env=OFFLINE)
    big = plan.backend("big")
    assert big.devices == ("2", "3") and big.weights_bytes == 16381470720 // 2 and not big.weights_exact
    assert big.kv_bytes_per_token == 72 * 1024
    assert [d.device for d in plan.devices] == ["2", "3"]


def test_backends_pinned_to_different_gpus_are_summed_per_gpu() -> None:
    plan = build_plan(settings(
        {"name": "a", "model": QWEN3_8B, "gpu_memory_utilization": 0.8, "max_model_len": 8192,
         "env": {"CUDA_VISIBLE_DEVICES": "0"}},
        {"name": "b", "model": QWEN3_8B, "gpu_memory_utilization": 0.8, "max_model_len": 8192,
         "env": {"CUDA_VISIBLE_DEVICES": "1"}}), device_memory={"0": L40S, "1": 80 * GB}, env=OFFLINE)
    assert [(d.device, d.total, d.missing_bytes) for d in plan.devices] == [("0", L40S, None), ("1", 80 * GB, None)]


def test_too_few_visible_devices_for_tensor_parallel() -> None:
    plan = build_plan(settings({"name": "big", "model": QWEN3_8B, "gpu_memory_utilization": 0.5,
                                "args": ["-tp", "2"], "env": {"CUDA_VISIBLE_DEVICES": "0"}}), default_memory=L40S)
    assert "--tensor-parallel-size 2 but CUDA_VISIBLE_DEVICES=0 lists 1 device(s)" in plan.backend("big").reason


def test_explicit_kv_cache_bytes_are_exact_and_a_missing_share_is_not_charged() -> None:
    plan = build_plan(settings({"name": "chat", "model": QWEN3_8B, "max_model_len": 4096,
                                "args": ["--kv-cache-memory-bytes", "8G"]}), default_memory=L40S, env=OFFLINE)
    chat = plan.backend("chat")
    assert (chat.kv_bytes, chat.kv_exact, chat.kv_tokens) == (8 * 2**30, True, qwen3_8b_kv().tokens(8 * 2**30))
    assert chat.share_source == "vLLM default" and chat.reserved_bytes is None
    assert plan.devices[0].reserved_bytes == 0
    assert any("no gpu_memory_utilization" in n for n in plan.devices[0].notes)
    assert any("still checks at start that 0.92 of the GPU is free" in n for n in chat.notes)


def test_without_gpu_memory_the_plan_is_unknown_but_the_facts_are_there() -> None:
    chat = build_plan(settings({"name": "chat", "model": QWEN3_8B, "gpu_memory_utilization": 0.5,
                                "max_model_len": 4096}), env=OFFLINE).backend("chat")
    assert chat.status == "unknown" and "GPU memory unknown" in chat.reason
    assert chat.weights_bytes == 16381470720 and chat.kv_bytes_per_token == 144 * 1024


def test_an_encoder_only_model_plans_no_kv_cache(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text('{"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 128,'
                                          ' "num_hidden_layers": 2, "num_attention_heads": 2, "vocab_size": 2048,'
                                          ' "intermediate_size": 512, "torch_dtype": "float32"}')
    from tests.unit.planner.published import write_safetensors
    write_safetensors(tmp_path / "model.safetensors", {"w": ("F32", [2048, 128])})
    bert = build_plan(settings({"name": "e", "model": str(tmp_path), "max_model_len": 512,
                                "args": ["--dtype", "float32", "--kv-cache-memory-bytes", "64M"]}),
                      default_memory=L40S).backend("e")
    assert (bert.kv_bytes_per_token, bert.kv_blocks, bert.kv_tokens, bert.sequences) == (0, 1, 0, None)
    assert bert.status == "fits" and any("encoder-only" in n for n in bert.notes)
