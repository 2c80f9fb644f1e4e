"""The planner's KV figures against real vLLM: the tokens a byte budget buys must be what vLLM builds.

vLLM's CPU build sizes its cache from `--kv-cache-memory-bytes` and publishes what it built on
`vllm:cache_config_info` (`num_gpu_blocks`, `block_size`, `kv_cache_size_tokens`). For each tiny
model the planner, given the same launch args, must predict the same number of blocks (hence
tokens within one block). tiny-chat and tiny-embed are read from the shared gateway's own backends
(`live`, no extra start-up); tiny-gqa (4 query heads, 2 KV heads) and tiny-hybrid (Gemma 2:
alternating sliding-window and full layers) each get a short-lived server of their own, two
start-ups (~25-30 s each on 2 cores) more in CI, with a budget that is not a whole number of blocks
so the rounding is checked too.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from tests.real_vllm.conftest import CACHE, ROOT, LiveGateway, _free_port, _run, _vllm_python
from vllm_gateway.planner.plan import BackendPlan, build_plan
from vllm_gateway.settings import Settings

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

# The flags conftest.py's `_backend` gives every launched tiny model.
LIVE_ARGS = ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", "64M", "--disable-uvicorn-access-log"]
START_TIMEOUT = 300.0


def cache_config(url: str) -> dict[str, str]:
    """The labels of `vllm:cache_config_info` on a vLLM server's own /metrics page."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    line = next((ln for ln in text.splitlines() if ln.startswith("vllm:cache_config_info{")), None)
    assert line is not None, f"no vllm:cache_config_info on {url}/metrics"
    return dict(re.findall(r'(\w+)="([^"]*)"', line))


def planned(model: Path, max_model_len: int, args: list[str], block_size: str) -> BackendPlan:
    """The planner's view of a backend launched with `args`, at the block size vLLM chose (the CPU
    platform picks 128 where GPUs use 16: vllm/platforms/cpu.py)."""
    settings = Settings(backends=[{"name": "b", "url": "http://127.0.0.1:9", "models": ["b"],
                                   "launch": {"model": str(model), "max_model_len": max_model_len,
                                              "args": [*args, "--block-size", block_size]}}])
    return build_plan(settings, env={"HF_HUB_OFFLINE": "1"}).backend("b")


def assert_same_cache(plan: BackendPlan, vllm: dict[str, str]) -> None:
    """Blocks equal; tokens within one block; and vLLM's own concurrency and token figures (what its
    log prints: `KV cache size: N tokens, Maximum concurrency ...: C x`) equal the planner's."""
    block = int(vllm["block_size"])
    blocks = int(vllm["num_gpu_blocks"])
    assert plan.kv_blocks == blocks, f"planner {plan.kv_blocks} blocks, vLLM {blocks} ({vllm})"
    assert plan.kv_tokens is not None and abs(plan.kv_tokens - blocks * block) <= block
    assert plan.concurrency is not None and plan.max_model_len is not None
    assert plan.concurrency == pytest.approx(float(vllm["kv_cache_max_concurrency"]))
    assert int(plan.concurrency * plan.max_model_len) == int(vllm["kv_cache_size_tokens"])


def models() -> Path:
    """The tiny models, built if missing (seconds; cached)."""
    folder = CACHE / "models"
    _run([_vllm_python(), str(ROOT / "tests" / "real_vllm" / "tiny_models.py"), str(folder)], "building the tiny models",
         600)
    return folder


def test_tiny_chat_cache_is_the_planned_one(live: LiveGateway) -> None:
    plan = planned(CACHE / "models" / "tiny-chat", 4096, LIVE_ARGS, cache_config(live.backend_urls["chat"])["block_size"])
    assert plan.kv_bytes_per_token == 2 * 2 * 64 * 2 * 4  # 2 layers x 2 KV heads x head_dim 64 x (K+V) x float32
    assert_same_cache(plan, cache_config(live.backend_urls["chat"]))


def test_the_encoder_only_embedder_has_no_cache_and_the_planner_agrees(live: LiveGateway) -> None:
    vllm = cache_config(live.backend_urls["embed"])
    plan = planned(CACHE / "models" / "tiny-embed", 512, LIVE_ARGS, vllm["block_size"])
    assert (vllm["num_gpu_blocks"], vllm["kv_cache_size_tokens"]) == ("1", "None")  # only the null block
    assert (plan.kv_bytes_per_token, plan.kv_blocks, plan.kv_tokens) == (0, 1, 0)


@contextmanager
def vllm_server(model: Path, args: list[str], workdir: Path) -> Iterator[tuple[str, Path]]:
    """One real vLLM CPU server in its own process group; stopped (SIGTERM, then SIGKILL) on exit."""
    port = _free_port()
    log = workdir / f"{model.name}.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "VLLM_CPU_KVCACHE_SPACE"}
    env.update({"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1", "VLLM_CPU_OMP_THREADS_BIND": "0"})
    argv = [_vllm_python(), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
            "--served-model-name", model.name, "--host", "127.0.0.1", "--port", str(port), *args]
    with open(log, "wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while True:
            if proc.poll() is not None:
                pytest.fail(f"vLLM exited with {proc.returncode}:\n{log.read_text(errors='replace')[-3000:]}",
                            pytrace=False)
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"vLLM not ready in {START_TIMEOUT:.0f} s:\n{log.read_text(errors='replace')[-3000:]}",
                            pytrace=False)
            time.sleep(0.5)
        yield url, log
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(30)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def own_server_cache(name: str, tmp_path: Path) -> tuple[Path, list[str], dict[str, str], int]:
    """A short-lived server for one tiny model with a 50 MB (decimal) KV budget: not a whole number
    of 128-token blocks, so the planner's floor is checked too. Returns what vLLM built and logged."""
    if os.environ.get("GATEWAY_SKIP_VLLM") == "1":
        pytest.skip("GATEWAY_SKIP_VLLM=1: real-vLLM tests skipped on purpose")
    model = models() / name
    args = ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", "50m", "--max-model-len", "512"]
    with vllm_server(model, args, tmp_path) as (url, log):
        vllm = cache_config(url)
        logged = re.search(r"KV cache size: ([\d,]+) tokens", log.read_text(errors="replace"))
    assert logged is not None, "vLLM logged no KV cache size"
    return model, args, vllm, int(logged.group(1).replace(",", ""))


def test_grouped_query_attention_cache_is_the_planned_one(tmp_path: Path) -> None:
    model, args, vllm, logged = own_server_cache("tiny-gqa", tmp_path)
    plan = planned(model, 512, args, vllm["block_size"])
    assert plan.kv_bytes_per_token == 2 * 2 * 32 * 2 * 4  # 2 KV heads, not the 4 query heads
    assert_same_cache(plan, vllm)
    assert logged == plan.kv_tokens
    mha_blocks = 50 * 10**6 // (2 * 4 * 128 * 64 * 4)  # what counting the 4 query heads would predict
    assert plan.kv_blocks is not None and plan.kv_blocks > mha_blocks


def test_a_hybrid_sliding_window_cache_is_grouped_as_vllm_groups_it(tmp_path: Path) -> None:
    """Gemma 2 layout: 2 sliding-window + 2 full-attention layers form two groups of 2 sharing one
    block pool, so a block costs 2 layers' pages, not 4 (twice the blocks a per-model sum predicts),
    and a 512-token request holds blocks in both groups."""
    model, args, vllm, logged = own_server_cache("tiny-hybrid", tmp_path)
    plan = planned(model, 512, args, vllm["block_size"])
    assert plan.facts["kv_cache_groups"] == [{"layers": 2, "sliding_window": 64}, {"layers": 2, "sliding_window": None}]
    assert plan.bytes_per_block == 2 * (2 * 128 * 64 * 4)  # 2 layers x (2 KV heads x 128 tokens x K+V x float32)
    assert_same_cache(plan, vllm)
    assert logged == int(plan.concurrency * 512)  # type: ignore[operator]
    assert plan.sequences == int(float(vllm["kv_cache_max_concurrency"]))
