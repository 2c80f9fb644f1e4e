"""The memory plan at work in `serve`: an `auto` backend launched with the share and KV bytes the
planner computed from the model's own files, the GPU checked before a launch, and what NVML says
on `/metrics` and `/status` (through a fake device list: there is no GPU here).

The launched processes are simulators started exactly as vLLM would be, so the test reads the
flags they really got from `/proc/<pid>/cmdline`.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.e2e.test_launch import ROOT, sim_backend, status
from tests.servers import gateway_settings, running, wait_for
from vllm_gateway.gateway import create_app
from vllm_gateway.gpu.fake import FakeGpu, FakeGpus
from vllm_gateway.planner.startup import plan_gateway

QWEN3_8B = str(Path(ROOT) / "tests" / "fixtures" / "models" / "qwen3-8b")  # its published config and index
GB = 10**9


def auto_backend(**launch: object) -> dict:
    backend = sim_backend("guard", QWEN3_8B, gpu_memory_utilization="auto", max_model_len=32768,
                          concurrent_sequences=2, **launch)
    backend["models"] = ["guard-8b"]
    return backend


def cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


def flag(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def test_an_auto_backend_is_launched_with_the_planned_share_and_exact_kv_bytes() -> None:
    settings = gateway_settings(auto_backend(), gpu={"memory": "48GB"})
    planned = plan_gateway(settings).backend("guard")
    assert planned.share_source == "auto" and planned.kv_bytes_passed and planned.sequences == 2
    with running(create_app(settings)) as gw:
        assert wait_for(lambda: status(gw.url)["guard"]["state"] == "ready", timeout=30)
        info = status(gw.url)["guard"]
        argv = cmdline(info["pid"])
        assert float(flag(argv, "--gpu-memory-utilization")) == pytest.approx(planned.share)
        assert int(flag(argv, "--kv-cache-memory-bytes")) == planned.kv_cache_memory_bytes
        memory = info["memory"]
        assert memory["share_source"] == "auto" and memory["share"] == planned.share
        assert memory["kv_tokens"] == planned.kv_tokens and memory["sequences"] == 2
        assert memory["kv_bytes_per_token"] == 147456  # Qwen3-8B: 36 layers x 8 KV heads x 128 x 2 x 2 bytes
        assert memory["line"].startswith("plan: fits, share") and memory["status"] == "fits"
        answer = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="guard-8b", messages=[{"role": "user", "content": "hi"}], max_tokens=2)
        assert answer.choices[0].message.content


def test_a_launch_waits_while_something_foreign_holds_the_gpu_and_says_who() -> None:
    gpu = FakeGpu(0, total=48 * GB, used=40 * GB, procs=[(4_000_000, 40 * GB)])
    settings = gateway_settings(auto_backend(restart_backoff_initial=0.2), gpu={"memory": "48GB"})
    with running(create_app(settings, gpus=FakeGpus([gpu]))) as gw:
        assert wait_for(lambda: "cannot start" in (status(gw.url)["guard"]["last_error"] or ""), timeout=15)
        info = status(gw.url)["guard"]
        assert info["state"] in ("failed", "restarting", "starting") and info["pid"] is None  # never spawned
        assert "GPU 0 has 8.00 GB" not in info["last_error"]  # figures are in GiB
        assert "pid 4000000" in info["last_error"] and "not ours" in info["last_error"]
        assert "lower this backend's share" in info["last_error"]
        gpu.used, gpu.procs = 1 * GB, []  # the foreign process went away: the next try starts it
        assert wait_for(lambda: status(gw.url)["guard"]["state"] == "ready", timeout=30)


def test_what_nvml_says_is_on_the_metrics_page_and_in_status() -> None:
    gpu = FakeGpu(0, total=48 * GB, used=2 * GB, busy=0.25)
    settings = gateway_settings(auto_backend(), gpu={"memory": "48GB"})
    with running(create_app(settings, gpus=FakeGpus([gpu]))) as gw:
        assert wait_for(lambda: status(gw.url)["guard"]["state"] == "ready", timeout=30)
        pid = status(gw.url)["guard"]["pid"]
        gpu.procs = [(pid, 30 * GB)]  # what NVML would list for the backend's process
        gpu.used = 32 * GB

        def reported() -> bool:
            return status(gw.url)["guard"].get("gpu_memory_bytes") == {"0": 30 * GB}

        assert wait_for(reported, timeout=10)
        page = httpx.get(f"{gw.url}/metrics", timeout=5).text
        assert 'gateway_gpu_memory_total_bytes{gpu="0"} 4.8e+10' in page
        assert 'gateway_gpu_memory_used_bytes{gpu="0"} 3.2e+10' in page
        assert 'gateway_gpu_utilization_ratio{gpu="0"} 0.25' in page
        assert 'gateway_backend_gpu_memory_bytes{backend="guard",gpu="0"} 3e+10' in page
        (listed,) = httpx.get(f"{gw.url}/status", timeout=5).json()["gpus"]
        assert listed["total_bytes"] == 48 * GB and listed["by_backend"] == {"guard": 30 * GB}


def test_without_a_gpu_the_pages_say_nothing_of_gpus(chat_backend) -> None:
    with running(create_app(gateway_settings({"name": "chat", "url": chat_backend.url}))) as gw:
        assert "gateway_gpu_" not in httpx.get(f"{gw.url}/metrics", timeout=5).text
        assert "gateway_backend_gpu_memory_bytes" not in httpx.get(f"{gw.url}/metrics", timeout=5).text
        assert httpx.get(f"{gw.url}/status", timeout=5).json()["gpus"] is None


def test_serve_refuses_a_plan_that_cannot_fit_before_launching_anything(tmp_path: Path) -> None:
    backend = sim_backend("guard", QWEN3_8B, gpu_memory_utilization=0.2, max_model_len=32768)
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"port": 0, "gpu": {"memory": "48GB"}, "backends": [backend]}))
    done = subprocess.run([sys.executable, "-m", "vllm_gateway", "serve", "--config", str(config)], capture_output=True,
                          text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 2
    (line,) = [line for line in done.stderr.splitlines() if line.startswith("vllm-gateway: backend guard:")]
    assert "GiB" in line and "bytes" in line  # what is missing, in bytes too
    assert "launching backend" not in done.stderr
