"""The `vllm-gateway` command: `check-config` as a real subprocess (what users and CI run), and
argument handling in-process."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vllm_gateway.cli import main

GOOD = """
host: 127.0.0.1
port: 9090
default_model: guard
backends:
  - name: embed
    url: http://127.0.0.1:8010
    models: [Qwen/Qwen3-Embedding-0.6B]
    aliases: [embed, text-embedding-3-small]
    api_key: very-secret-backend-key
  - name: guard
    url: http://127.0.0.1:8000
    aliases: [guard]
"""


def command() -> list[str]:
    """The console script when installed (as `make test` does), else `python -m vllm_gateway`."""
    script = Path(sys.executable).with_name("vllm-gateway")
    return [str(script)] if script.exists() else [sys.executable, "-m", "vllm_gateway"]


def run(args: list[str], env: dict[str, str] | None = None, module: bool = False) -> subprocess.CompletedProcess:
    clean = {k: v for k, v in os.environ.items() if not k.upper().startswith("GATEWAY_")}
    base = [sys.executable, "-m", "vllm_gateway"] if module else command()
    return subprocess.run(base + args, capture_output=True, text=True, timeout=60, env={**clean, **(env or {})},
                          cwd=Path(__file__).resolve().parents[2])


@pytest.fixture(autouse=True)
def no_gateway_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.upper().startswith("GATEWAY_"):
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "gateway.yaml"
    path.write_text(textwrap.dedent(text), encoding="utf-8")
    return path


def test_check_config_prints_the_routing_table(tmp_path: Path) -> None:
    result = run(["check-config", "--config", str(write(tmp_path, GOOD))])
    assert result.returncode == 0, result.stderr
    out = result.stdout
    assert "gateway listens on 127.0.0.1:9090 with 2 backend(s)" in out
    assert "backend embed -> http://127.0.0.1:8010" in out
    assert "models:  Qwen/Qwen3-Embedding-0.6B" in out
    assert "aliases: embed, text-embedding-3-small (sent upstream as Qwen/Qwen3-Embedding-0.6B)" in out
    assert "backend guard -> http://127.0.0.1:8000" in out and "(learned from its /v1/models)" in out
    assert "requests without `model` go to guard" in out
    assert out.rstrip().endswith("configuration OK")
    assert "very-secret-backend-key" not in out + result.stderr


def test_check_config_names_the_bad_key_and_fails(tmp_path: Path) -> None:
    bad = write(tmp_path, """
        backends:
          - {name: chat, url: "http://127.0.0.1:8000"}
          - {name: embed, url: "http://127.0.0.1:8010", modles: [x]}
    """)
    result = run(["check-config", "--config", str(bad)], module=True)
    assert result.returncode != 0
    assert "backends[1].modles: unknown key" in result.stderr
    assert "Traceback" not in result.stderr and "configuration OK" not in result.stdout


def test_check_config_reads_gateway_config_and_environment(tmp_path: Path) -> None:
    result = run(["check-config"], env={"GATEWAY_CONFIG": str(write(tmp_path, GOOD)), "GATEWAY_PORT": "9191",
                                        "GATEWAY_BACKENDS": '[{"name": "solo", "url": "http://127.0.0.1:8001"}]'})
    assert result.returncode == 0, result.stderr
    assert "127.0.0.1:9191 with 1 backend(s)" in result.stdout and "backend solo -> http://127.0.0.1:8001" in result.stdout


def test_check_config_with_invalid_json_in_the_environment(tmp_path: Path) -> None:
    result = run(["check-config"], env={"GATEWAY_BACKENDS": "[{'name': 'single quotes'}]"})
    assert result.returncode != 0 and "GATEWAY_BACKENDS is not valid JSON" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("text", "named"), [
    ("backends: [{name: a, url: 'http://h:1'}, {name: a, url: 'http://h:2'}]\n", "backends[1].name: duplicate backend name 'a'"),
    ("backends: [{name: a, url: 'http://h:1', models: [m]}, {name: b, url: 'http://h:2', aliases: [m]}]\n",
     "model or alias 'm' is claimed by both 'a' and 'b'"),
    ("backends: [{name: a, url: 'http://h:1/v1'}]\n", "backends[0].url"),
    ("timeouts: {connect: -1}\n", "timeouts.connect"),
    ("port: [8080]\n", "port:"),
])
def test_check_config_errors_in_process(tmp_path: Path, capsys, text: str, named: str) -> None:
    assert main(["check-config", "--config", str(write(tmp_path, text))]) == 2
    captured = capsys.readouterr()
    assert named in captured.err and captured.out == ""


def test_check_config_missing_file(tmp_path: Path, capsys) -> None:
    assert main(["check-config", "--config", str(tmp_path / "absent.yaml")]) == 2
    assert "cannot read configuration file" in capsys.readouterr().err


def test_check_config_warns_about_an_open_gateway_without_keys(tmp_path: Path, capsys) -> None:
    assert main(["check-config", "--config", str(write(tmp_path, "host: 0.0.0.0\n"))]) == 0
    out = capsys.readouterr().out
    assert "warning: api_keys" in out and "(no backends" in out


def test_no_command_prints_help(capsys) -> None:
    assert main([]) == 2
    assert "check-config" in capsys.readouterr().out


@pytest.mark.parametrize("sub", ["serve", "check-config", "demo", "simulate"])
def test_each_command_has_help(capsys, sub: str) -> None:
    with pytest.raises(SystemExit) as caught:
        main([sub, "--help"])
    assert caught.value.code == 0
    out = capsys.readouterr().out
    expected = {"serve": ["--config", "--host", "--port"], "check-config": ["--config"], "demo": ["--port"],
                "simulate": ["--model", "--kind", "--port"]}[sub]
    assert all(flag in out for flag in expected)


def test_version(capsys) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.startswith("vllm-gateway ")


# -- on-demand residency in check-config ---------------------------------------------------------

def _on_demand_config(tmp_path: Path, sequences: int) -> Path:
    from tests.unit.planner.published import FIXTURES

    model = FIXTURES / "qwen3-8b"
    backends = "".join(
        f"  - {{name: {name}, url: 'http://127.0.0.1:80{i}0', models: [{name}], launch: {{model: '{model}', "
        f"gpu_memory_utilization: auto, max_model_len: 32768, concurrent_sequences: {sequences}, residency: on_demand}}}}\n"
        for i, name in enumerate(("chat-a", "chat-b")))
    return write(tmp_path, "host: 127.0.0.1\ngpu: {memory_budget: 0.9, memory: 48GB}\nbackends:\n" + backends)


def test_check_config_accepts_on_demand_shares_that_only_fit_one_at_a_time(tmp_path: Path) -> None:
    result = run(["check-config", "--config", str(_on_demand_config(tmp_path, 2))], env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "residency: on_demand, swap: sleep (level 1), min_awake 10 s" in result.stdout
    assert "on demand chat-a 0.5" in result.stdout and "at most 1 of them awake at once" in result.stdout
    assert "host RAM: level-1 sleep keeps the weights there: up to 33.6 GiB with chat-a, chat-b asleep" in result.stdout
    assert result.stdout.rstrip().endswith("configuration OK")


def test_check_config_explains_an_on_demand_backend_that_could_never_be_woken(tmp_path: Path) -> None:
    result = run(["check-config", "--config", str(_on_demand_config(tmp_path, 6))], env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 2, result.stdout
    assert "gpu.memory_budget: backend chat-a (residency: on_demand, gpu_memory_utilization" in result.stderr
    assert "could never be woken: even alone it needs" in result.stderr
    assert "configuration OK" not in result.stdout
