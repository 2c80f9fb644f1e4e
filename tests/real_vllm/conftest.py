"""One `vllm-gateway serve` launching two real vLLM CPU servers, shared by the real-vLLM tests.

Set-up, in order: the vLLM CPU virtual environment (`scripts/vllm-cpu-env.sh`, cached under
~/.cache/vllm-gateway, created when missing), the tiny chat and embedding models
(`tiny_models.py`, cached too), then the gateway as a real subprocess whose YAML puts both
backends under `launch:`. Nothing here is skipped quietly: when vLLM cannot be installed the set
fails. `GATEWAY_SKIP_VLLM=1` skips it on purpose (e.g. a laptop without the disk space).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
CACHE = Path(os.environ.get("GATEWAY_VLLM_CACHE", Path.home() / ".cache" / "vllm-gateway"))
START_TIMEOUT = 420.0  # two servers, one after the other, ~30-50 s each on 2 cores; generous for slow CI


@dataclass
class LiveGateway:
    url: str
    proc: subprocess.Popen
    log: Path
    backend_urls: dict[str, str]
    workdir: Path
    started_s: float = 0.0
    seen_pids: set[int] = field(default_factory=set)  # every backend pid a test saw, for clean-up

    def status(self) -> dict[str, dict]:
        backends = httpx.get(f"{self.url}/status", timeout=10).json()["backends"]
        for b in backends:
            if b.get("pid"):
                self.seen_pids.add(b["pid"])
        return {b["name"]: b for b in backends}

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _run(argv: list[str], what: str, timeout: float) -> str:
    try:
        done = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{what} did not finish within {timeout:.0f} s", pytrace=False)
    if done.returncode != 0:
        pytest.fail(f"{what} failed (exit {done.returncode}); set GATEWAY_SKIP_VLLM=1 to skip the real-vLLM "
                    f"tests on purpose.\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}", pytrace=False)
    return done.stdout


def _vllm_python() -> str:
    out = _run(["bash", str(ROOT / "scripts" / "vllm-cpu-env.sh")], "installing vllm-cpu (scripts/vllm-cpu-env.sh)", 1800)
    python = out.strip().splitlines()[-1].strip()
    if not os.access(python, os.X_OK):
        pytest.fail(f"scripts/vllm-cpu-env.sh printed {python!r}, which is not an interpreter", pytrace=False)
    return python


def _gateway_command() -> list[str]:
    script = shutil.which("vllm-gateway", path=str(Path(sys.executable).parent))
    return [script] if script else [sys.executable, "-m", "vllm_gateway"]


def _backend(name: str, model_dir: Path, python: str, core: int, workdir: Path, max_model_len: int = 512) -> dict:
    """A backend the gateway launches: the CPU build's server module, flags from vllm-on-cpu.md."""
    return {
        "name": name,
        "url": f"http://127.0.0.1:{_free_port()}",
        "models": [model_dir.name],
        "launch": {
            "model": str(model_dir),
            "command": [python, "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}"],
            "max_model_len": max_model_len,
            "args": ["--dtype", "float32", "--enforce-eager", "--kv-cache-memory-bytes", "64M",
                     "--disable-uvicorn-access-log"],
            "env": {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1", "DO_NOT_TRACK": "1",
                    "VLLM_ENABLE_RESPONSES_API_STORE": "1",
                    "VLLM_CPU_OMP_THREADS_BIND": str(core),
                    # beyond the tiny model's 512 positions: long generations for the disconnect test
                    "VLLM_ALLOW_LONG_MAX_MODEL_LEN": "1"},
            "warmup": True,
            "ready_timeout": 300,
            "stop_timeout": 15,
            "restart_backoff_initial": 0.5,
            "log_file": str(workdir / "{name}.log"),
        },
    }


@pytest.fixture(scope="session")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveGateway]:
    if os.environ.get("GATEWAY_SKIP_VLLM") == "1":
        pytest.skip("GATEWAY_SKIP_VLLM=1: real-vLLM tests skipped on purpose")
    python = _vllm_python()
    models = CACHE / "models"
    _run([python, str(ROOT / "tests" / "real_vllm" / "tiny_models.py"), str(models)], "building the tiny models", 600)

    workdir = tmp_path_factory.mktemp("real-vllm")
    port = _free_port()
    chat = _backend("chat", models / "tiny-chat", python, 0, workdir, max_model_len=4096)
    embed = _backend("embed", models / "tiny-embed", python, 1, workdir)
    config = workdir / "gateway.yaml"
    config.write_text(yaml.safe_dump({
        "host": "127.0.0.1", "port": port, "health_check_interval": 1.0, "shutdown_grace": 10,
        "backends": [chat, embed],
    }))
    # The file is the whole configuration: no GATEWAY_* from the caller, no KV-cache override.
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "VLLM_CPU_KVCACHE_SPACE"}
    log = workdir / "gateway.log"
    started = time.monotonic()
    with open(log, "wb") as out:
        proc = subprocess.Popen([*_gateway_command(), "serve", "--config", str(config)], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    gw = LiveGateway(f"http://127.0.0.1:{port}", proc, log, {"chat": chat["url"], "embed": embed["url"]}, workdir)
    try:
        _wait_ready(gw)
        gw.started_s = time.monotonic() - started
        print(f"\n[real-vllm] gateway with two vLLM backends ready after {gw.started_s:.1f} s", file=sys.stderr)
        yield gw
    finally:
        _stop(gw)


def _wait_ready(gw: LiveGateway) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            pytest.fail(f"vllm-gateway serve exited with {gw.proc.returncode} while starting:\n{gw.log_tail()}", pytrace=False)
        try:
            if httpx.get(f"{gw.url}/ready", timeout=5).status_code == 200:
                gw.status()
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    pytest.fail(f"the gateway was not ready within {START_TIMEOUT:.0f} s:\n{gw.log_tail()}", pytrace=False)


def _stop(gw: LiveGateway) -> None:
    """Whatever the tests did, leave nothing running: SIGTERM, then SIGKILL every group we know."""
    if gw.proc.poll() is None:
        gw.proc.send_signal(signal.SIGTERM)
        try:
            gw.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(gw.proc.pid, signal.SIGKILL)
            gw.proc.wait(10)
    for pid in gw.seen_pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGKILL)
