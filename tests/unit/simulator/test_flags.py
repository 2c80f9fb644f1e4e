"""`flags.py` and `config.py`: the vLLM flags and environment `vllm-gateway simulate` reads, and vLLM's
start-up refusals; one real `simulate` process started the way a launcher starts vLLM."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from vllm_gateway.cli import _parser
from vllm_gateway.simulator import (
    LoRAModule,
    Simulator,
    SimulatorConfig,
    environment_flags,
    parse_lora_module,
    write_adapter,
)
from vllm_gateway.simulator.flags import vllm_settings

ROOT = Path(__file__).resolve().parents[3]


def settings(*flags: str, env: dict[str, str] | None = None) -> dict[str, object]:
    return vllm_settings(_parser().parse_args(["simulate", "--model", "m", *flags]), env or {})


def test_the_flags_a_launched_vllm_gets_become_config_fields() -> None:
    got = settings("--enable-sleep-mode", "--enable-lora", "--max-loras", "2", "--max-lora-rank", "64",
                   "--max-cpu-loras", "4", "--lora-modules", "a=/x", '{"name": "b", "path": "/y", "base_model_name": "m"}',
                   "--kv-cache-memory-bytes", "64M", "--wake-delay", "1.5", "--sleep-delay", "0.5",
                   "--lora-load-delay", "0.2", "--distributed-executor-backend", "mp",
                   env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    assert got == {"dev_mode": True, "runtime_lora_updating": True, "enable_sleep_mode": True, "sleep_delay": 0.5,
                   "wake_delay": 1.5, "enable_lora": True, "max_loras": 2, "max_lora_rank": 64, "max_cpu_loras": 4,
                   "lora_modules": [LoRAModule("a", "/x"), LoRAModule("b", "/y", "m")], "lora_load_delay": 0.2,
                   "executor_backend": "mp"}
    SimulatorConfig(models=["m"], **got).check()  # type: ignore[arg-type]


def test_defaults_are_vllms() -> None:
    assert settings() == {"dev_mode": False, "runtime_lora_updating": False, "enable_sleep_mode": False,
                          "sleep_delay": 0.0, "wake_delay": 0.0, "enable_lora": False, "max_loras": 1,
                          "max_lora_rank": 16, "max_cpu_loras": None, "lora_modules": [], "lora_load_delay": 0.0,
                          "executor_backend": "uni"}
    assert settings("--enable-lora", "--no-enable-lora")["enable_lora"] is False


def test_a_rank_vllm_does_not_offer_is_an_argument_error(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        settings("--max-lora-rank", "7")
    assert "invalid choice: 7" in capsys.readouterr().err


@pytest.mark.parametrize(("env", "dev", "lora"), [
    ({}, False, False), ({"VLLM_SERVER_DEV_MODE": "1"}, True, False), ({"VLLM_SERVER_DEV_MODE": "0"}, False, False),
    ({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": " TRUE "}, False, True), ({"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "yes"}, False, False),
])
def test_environment_variables_are_read_as_vllm_reads_them(env: dict[str, str], dev: bool, lora: bool) -> None:
    assert environment_flags(env) == {"dev_mode": dev, "runtime_lora_updating": lora}


def test_dev_mode_must_be_an_integer_as_in_vllm() -> None:
    with pytest.raises(ValueError, match="VLLM_SERVER_DEV_MODE must be an integer"):
        environment_flags({"VLLM_SERVER_DEV_MODE": "true"})


def test_lora_modules_parse_in_both_of_vllms_forms_and_refuse_the_rest() -> None:
    assert parse_lora_module("sql=/a/b=c") == LoRAModule("sql", "/a/b=c")
    assert parse_lora_module('{"name": "x", "path": "/p", "base_model_name": "m", "is_3d_lora_weight": false}') == \
        LoRAModule("x", "/p", "m")
    with pytest.raises(ValueError, match="Invalid JSON format for --lora-modules"):
        parse_lora_module("{broken")
    with pytest.raises(ValueError, match="Invalid fields for --lora-modules"):
        parse_lora_module('{"name": "x", "where": "/p"}')


@pytest.mark.parametrize(("fields", "message"), [
    ({"max_loras": 2, "max_cpu_loras": 1}, r"max_cpu_loras \(1\) must be >= max_loras \(2\)"),
    ({"max_loras": 0}, "greater than or equal to 1"),
    ({"max_lora_rank": 12}, "max_lora_rank must be one of"),
    ({"executor_backend": "ray"}, "executor_backend is uni or mp"),
])
def test_settings_vllm_would_not_start_with_are_refused(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Simulator(SimulatorConfig(models=["m"], **fields))  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def simulate(*args: str, env: dict[str, str]) -> subprocess.Popen[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("GATEWAY_", "VLLM_"))}
    return subprocess.Popen([sys.executable, "-m", "vllm_gateway", "simulate", *args], cwd=ROOT, text=True,
                            env={**clean, **env}, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def test_simulate_stops_at_start_like_vllm_when_a_static_adapter_is_missing() -> None:
    process = simulate("--model", "m", "--enable-lora", "--lora-modules", "s=/nowhere/adapter", env={})
    out, _ = process.communicate(timeout=60)
    assert process.returncode == 2
    assert "vllm-gateway: simulate: Loading lora s failed: No adapter found for /nowhere/adapter" in out


def test_simulate_started_as_a_launcher_starts_vllm_serves_sleep_and_lora(tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "sql", rank=8)
    port = free_port()
    process = simulate("--model", "base", "--port", str(port), "--enable-sleep-mode", "--enable-lora",
                       "--max-lora-rank", "8", "--lora-modules", f"sql={adapter}", "--kv-cache-memory-bytes", "64M",
                       "--gpu-memory-utilization", "0.4",
                       env={"VLLM_SERVER_DEV_MODE": "1", "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "1"})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            assert process.poll() is None, process.communicate()[0]
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "simulate did not come up"
            time.sleep(0.1)
        assert [m["id"] for m in httpx.get(f"{url}/v1/models").json()["data"]] == ["base", "sql"]
        assert httpx.post(f"{url}/sleep?level=1").json() == {"status": "sleeping", "level": 1}
        assert httpx.get(f"{url}/is_sleeping").json() == {"is_sleeping": True}
        assert httpx.post(f"{url}/wake_up").json() == {"status": "awake", "tags": None}
        stats = httpx.get(f"{url}/_sim/stats").json()
        assert stats["sleeps"] == 1 and len(stats["awake_intervals"]) == 2  # --enable-sleep-mode freed memory
        loaded = httpx.post(f"{url}/v1/load_lora_adapter", json={"lora_name": "x", "lora_path": str(adapter)})
        assert loaded.text == "Success: LoRA adapter 'x' added successfully."
    finally:
        process.kill()
        process.communicate(timeout=10)
