"""On-demand residency with real vLLM (the CPU build): `swap: restart`, two tiny chat models that
may not be awake together, and vLLM's own answer to sleep mode on a platform that has none.

One gateway of its own (not the shared `live` one): tiny-chat and tiny-gqa, 0.6 of the budget
each, so only one may be awake; neither is started until a request needs it. Requests alternate
a, b, a: three cold starts (~30 s each on 2 cores), timed and printed. A watcher polls /proc
every 20 ms for the process groups of the two servers (found by their served model names) and
records the most alive at once: it must be 1. A third backend asks for `swap: sleep`, which the
CPU build refuses at start-up (`Sleep mode is not supported on current platform`, from vLLM's
ModelConfig, as `current_platform.is_sleep_mode_available()` is false there); the gateway must
give it up with the fix in its error. CI cost: about 2 minutes.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from openai import OpenAI

from tests.real_vllm.conftest import CACHE, ROOT, _backend, _free_port, _gateway_command, _run, _vllm_python
from tests.servers import wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

NAMES = ("swap-a", "swap-b")


class GroupWatch:
    """The most process groups of the given vLLM servers alive at one instant (from /proc)."""

    def __init__(self, served_names: tuple[str, ...]) -> None:
        self.markers = {name.encode() for name in served_names}
        self.leaders: set[int] = set()
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> GroupWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def scan(self) -> int:
        groups: dict[int, int] = {}  # pid -> pgid, of live processes
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/stat", "rb") as f:
                    fields = f.read().rsplit(b")", 1)[1].split()
                if fields[0] in (b"Z", b"X"):
                    continue
                groups[int(entry)] = int(fields[2])
                if int(entry) not in self.leaders:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if self.markers & set(f.read().split(b"\0")):
                            self.leaders.add(int(entry))
            except (OSError, IndexError, ValueError):
                continue
        return len({pgid for pgid in groups.values() if pgid in self.leaders})

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.scan())
            self.samples += 1
            time.sleep(0.02)


@pytest.fixture
def swapping_gateway(tmp_path: Path) -> Any:
    if os.environ.get("GATEWAY_SKIP_VLLM") == "1":
        pytest.skip("GATEWAY_SKIP_VLLM=1: real-vLLM tests skipped on purpose")
    python = _vllm_python()
    models = CACHE / "models"
    _run([python, str(ROOT / "tests" / "real_vllm" / "tiny_models.py"), str(models)], "building the tiny models", 600)
    backends = []
    for name, model in zip(NAMES, ("tiny-chat", "tiny-gqa"), strict=True):
        backend = _backend(name, models / model, python, 0, tmp_path)
        backend["models"] = [name]
        backend["launch"].update(gpu_memory_utilization=0.6, residency="on_demand", swap="restart", min_awake=0,
                                 max_wait=300, warmup=True)
        backends.append(backend)
    no_sleep = _backend("sleeper", models / "tiny-chat", python, 1, tmp_path)
    no_sleep["models"] = ["sleeper"]
    no_sleep["launch"].update(gpu_memory_utilization=0.2, residency="on_demand", swap="sleep")
    port = _free_port()
    config = tmp_path / "gateway.yaml"
    config.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": port, "health_check_interval": 1.0,
                                      "shutdown_grace": 5, "gpu": {"memory_budget": 0.9}, "backends": [*backends, no_sleep]}))
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_") and k != "VLLM_CPU_KVCACHE_SPACE"}
    log = tmp_path / "gateway.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([*_gateway_command(), "serve", "--config", str(config)], cwd=ROOT, env=env, stdout=out,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        yield url, log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)


def status(url: str) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(f"{url}/status", timeout=10).json()["backends"]}


def test_restart_mode_swaps_two_real_vllm_servers_never_both_alive(swapping_gateway: tuple[str, Path]) -> None:
    url, log = swapping_gateway

    def up() -> bool:
        try:
            return httpx.get(f"{url}/health", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    assert wait_for(up, 30, 0.2), log.read_text(errors="replace")[-3000:]
    sdk = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=400)
    timings = []
    with GroupWatch(NAMES) as watch:
        assert watch.scan() == 0  # nothing started before it is needed
        for model in ("swap-a", "swap-b", "swap-a"):
            began = time.monotonic()
            reply = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                                extra_body={"ignore_eos": True})
            took = time.monotonic() - began
            assert reply.choices[0].message.content is not None and reply.usage.completion_tokens == 4
            timings.append((model, took, status(url)[model]["residency"]["last_wake_s"]))
        # A request for the model that is awake now is served at once, with no swap.
        began = time.monotonic()
        stream = sdk.chat.completions.create(model="swap-a", messages=[{"role": "user", "content": "hi"}], max_tokens=4,
                                             stream=True, extra_body={"ignore_eos": True})
        assert sum(1 for chunk in stream if chunk.choices and chunk.choices[0].delta.content) == 4
        awake_request = time.monotonic() - began
    state = status(url)
    assert watch.peak == 1 and watch.samples > 100, (watch.peak, watch.samples)
    assert state["swap-a"]["state"] == "ready" and state["swap-b"]["state"] == "asleep"
    assert state["swap-a"]["residency"]["swaps"] == {"sleep": 1, "wake": 2}
    assert state["swap-a"]["restarts"] == 0 and state["swap-b"]["restarts"] == 0  # parked on purpose, not restarted
    # The CPU build has no sleep mode: that backend failed for good, saying what to change.
    sleeper = state["sleeper"]
    assert sleeper["state"] == "failed" and "use launch.swap: restart" in sleeper["last_error"], sleeper["last_error"]
    assert "Sleep mode is not supported on current platform" in sleeper["last_error"]
    lines = ", ".join(f"{model} {took:.1f} s (wake {wake:.1f} s)" for model, took, wake in timings)
    print(f"\n[real-vllm residency] restart-mode swaps, first request after each: {lines}; "
          f"a request to the awake model: {awake_request:.2f} s; at most {watch.peak} server alive", file=sys.stderr)
