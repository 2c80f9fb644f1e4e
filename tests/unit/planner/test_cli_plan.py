"""`vllm-gateway plan` and the plan lines of `check-config`, as real subprocesses.

Bad input gives one line naming the backend and what to change, exit 2; a plan that cannot fit
makes check-config refuse, naming the backend and the bytes missing; a model not downloaded is
only reported (vLLM may download it at launch).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.unit.planner.published import FIXTURES, header_only_model

QWEN3_8B = FIXTURES / "qwen3-8b"


def run(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith(("GATEWAY_", "HF_"))}
    clean.update({"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": "/nonexistent/hub"}, **(env or {}))
    return subprocess.run([sys.executable, "-m", "vllm_gateway", *args], check=False, capture_output=True, text=True,
                          env=clean, timeout=60)


def config(tmp_path: Path, *backends: str, extra: str = "") -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(extra + "backends:\n" + "".join(backends))
    return path


def guard(share: str = "0.6", model: Path | str = QWEN3_8B, more: str = "max_model_len: 32768") -> str:
    return (f"  - {{name: guard, url: 'http://127.0.0.1:8000', models: [guard], "
            f"launch: {{model: '{model}', gpu_memory_utilization: {share}, {more}}}}}\n")


def test_the_table_for_a_gpu_it_does_not_have(tmp_path: Path) -> None:
    embed = header_only_model(tmp_path / "embed", "qwen3-embedding-0.6b")
    done = run("plan", "--config", str(config(tmp_path, guard(), (
        f"  - {{name: embed, url: 'http://127.0.0.1:8010', models: [embed], launch: {{model: '{embed}', "
        f"gpu_memory_utilization: 0.15, max_model_len: 8192, args: [--runner, pooling]}}}}\n"))), "--gpu-memory", "48GB")
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "GPU 0: 44.70 GiB total, budget 0.9 = 40.23 GiB"
    row = next(line for line in lines if line.lstrip().startswith("guard"))
    assert "15.26 GiB" in row and "144.0 KiB" in row and "~2 x 32,768" in row and row.endswith("fits")
    assert any(line.lstrip().startswith("sum") and "0.75" in line for line in lines)
    assert "estimates (not measured here" in done.stdout


def test_json(tmp_path: Path) -> None:
    done = run("plan", "--config", str(config(tmp_path, guard())), "--gpu-memory", "48GiB", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    (backend,) = plan["backends"]
    assert (backend["name"], backend["status"], backend["weights_bytes"]) == ("guard", "fits", 16381470720)
    assert backend["kv_bytes_per_token"] == 147456 and plan["devices"][0]["total"] == 48 * 2**30
    assert plan["refusals"] == []


@pytest.mark.parametrize(("backend", "message"), [
    (guard(model="/nonexistent/model"), "backend guard: model files not readable: /nonexistent/model: no such folder"),
    (guard(model="Qwen/Qwen3Guard-Gen-8B"), ("backend guard: model files not readable: Qwen/Qwen3Guard-Gen-8B: not a "
                                            "local folder and not in the Hugging Face cache")),
    (guard(model=FIXTURES / "deepseek-v2-lite-chat"),
     f"backend guard: {FIXTURES / 'deepseek-v2-lite-chat'}: no safetensors files, so the weights' size is unknown"),
])
def test_a_model_plan_cannot_read_is_one_line_naming_the_backend(tmp_path: Path, backend: str, message: str) -> None:
    done = run("plan", "--config", str(config(tmp_path, backend)), "--gpu-memory", "48GB")
    assert done.returncode == 2 and done.stdout == ""
    assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr


def test_a_config_without_the_fields_names_backend_and_field(tmp_path: Path) -> None:
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text('{"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32}')
    done = run("plan", "--config", str(config(tmp_path, guard(model=model))), "--gpu-memory", "48GB")
    assert done.returncode == 2
    assert done.stderr.strip() == f"vllm-gateway plan: backend guard: {model}: config.json has no num_hidden_layers " \
                                  f"(nor n_layer, num_layers)"


def test_a_share_that_cannot_hold_one_sequence_is_exit_2_naming_the_bytes(tmp_path: Path) -> None:
    done = run("plan", "--config", str(config(tmp_path, guard(share="0.35"))), "--gpu-memory", "48GB")
    assert done.returncode == 2
    (line,) = done.stderr.strip().splitlines()
    assert line.startswith("vllm-gateway plan: backend guard: share 0.35 of 44.70 GiB is 15.65 GiB")
    assert "bytes) missing; raise the share or lower max_model_len" in line
    assert "does not fit" in done.stdout  # the table is still printed, to see why


def test_without_a_gpu_and_without_gpu_memory_it_says_what_to_give(tmp_path: Path) -> None:
    done = run("plan", "--config", str(config(tmp_path, guard())))
    assert done.returncode == 2
    assert done.stderr.strip() == ("vllm-gateway plan: no GPU found through NVML and no --gpu-memory: give the GPU's "
                                   "size, e.g. --gpu-memory 48GB (or set gpu.memory)")


def test_gpu_memory_from_the_configuration(tmp_path: Path) -> None:
    done = run("plan", "--config", str(config(tmp_path, guard(), extra="gpu: {memory: 80GB}\n")))
    assert done.returncode == 0 and done.stdout.startswith("GPU 0: 74.51 GiB total")


def test_a_size_that_is_not_one(tmp_path: Path) -> None:
    done = run("plan", "--config", str(config(tmp_path, guard())), "--gpu-memory", "lots")
    assert done.returncode == 2 and "--gpu-memory 'lots' is not a size such as 48GB (decimal)" in done.stderr


def test_nothing_launched_nothing_to_plan(tmp_path: Path) -> None:
    done = run("plan", "--config", str(config(tmp_path, "  - {name: a, url: 'http://127.0.0.1:8000'}\n")),
               "--gpu-memory", "48GB")
    assert done.returncode == 2 and "no backend has a `launch:` section" in done.stderr


def test_check_config_prints_the_plan_line_and_refuses_what_cannot_fit(tmp_path: Path) -> None:
    fits = run("check-config", "--config", str(config(tmp_path, guard(), extra="gpu: {memory: 48GB}\n")))
    assert fits.returncode == 0, fits.stderr
    assert "    plan: fits, share 0.6, weights 15.26 GiB" in fits.stdout and "configuration OK" in fits.stdout
    refused = run("check-config", "--config", str(config(tmp_path, guard(share="0.35"), extra="gpu: {memory: 48GB}\n")))
    assert refused.returncode == 2 and "configuration OK" not in refused.stdout
    assert refused.stderr.startswith("vllm-gateway: backend guard: share 0.35 of 44.70 GiB")
    assert "bytes) missing" in refused.stderr


def test_check_config_does_not_refuse_a_model_it_cannot_read(tmp_path: Path) -> None:
    done = run("check-config", "--config", str(config(tmp_path, guard(model="Qwen/Qwen3Guard-Gen-8B"),
                                                      extra="gpu: {memory: 48GB}\n")))
    assert done.returncode == 0, done.stderr
    assert "plan: unknown (model files not readable: Qwen/Qwen3Guard-Gen-8B" in done.stdout
    assert "configuration OK" in done.stdout


def test_check_config_shows_the_planned_command_for_auto(tmp_path: Path) -> None:
    done = run("check-config", "--config", str(config(tmp_path, guard(
        share="auto", more="max_model_len: 32768, concurrent_sequences: 3"), extra="gpu: {memory: 48GB}\n")))
    assert done.returncode == 0, done.stderr
    launch = next(line for line in done.stdout.splitlines() if "launch:" in line)
    assert "--gpu-memory-utilization 0." in launch and f"--kv-cache-memory-bytes {3 * 2048 * 36 * 8 * 16 * 512}" in launch
