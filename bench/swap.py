"""Swap latency: how long the first request for a sleeping model takes, and what the wake itself took.

Starts `vllm-gateway serve` (a real process) and alternates requests between two on-demand models
that cannot be awake together, so every request but the first of each pair needs a swap: the
awake model sleeps, the other wakes, then it answers. Each round records, per model:
- `swap request`: the client's time to the first streamed token of a request that needed a swap;
- `wake`: the gateway's own figure for the wake (`/status` `residency.last_wake_s`, warm-up included);
- `awake request`: a second request right after, to the model now awake (no swap), for comparison.

Without `--config` the two models are simulated vLLM servers launched by the gateway in sleep mode,
with `--wake-delay`/`--sleep-delay` standing in for vLLM's (`swap request - wake-delay - sleep-delay
- awake request` is then the gateway's own cost). With `--config` it runs your configuration, e.g.
on a GPU box two real vLLM backends with `residency: on_demand` (see the README, "When the models
don't all fit"):

    python bench/swap.py                                   # simulated, wake 0.5 s, sleep 0.2 s
    python bench/swap.py --wake-delay 0 --sleep-delay 0    # the machinery alone
    python bench/swap.py --config gpu.yaml --models chat-a chat-b --rounds 10

Prints a table and one JSON line; never asserts (a benchmark, not a test).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import httpx
import yaml
from openai import OpenAI


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def simulated_config(folder: Path, wake_delay: float, sleep_delay: float, level: int) -> tuple[Path, list[str]]:
    backends = []
    for name in ("sim-a", "sim-b"):
        command = [sys.executable, "-m", "vllm_gateway", "simulate", "--model", "{model}", "--wake-delay", str(wake_delay),
                   "--sleep-delay", str(sleep_delay)]
        backends.append({"name": name, "url": f"http://127.0.0.1:{free_port()}", "models": [name],
                         "launch": {"model": name, "command": command, "env": {"PYTHONPATH": str(ROOT)},
                                    "gpu_memory_utilization": 0.6, "residency": "on_demand", "min_awake": 0,
                                    "sleep_level": level}})
    path = folder / "swap.yaml"
    path.write_text(yaml.safe_dump({"host": "127.0.0.1", "port": free_port(), "log_level": "warning",
                                    "gpu": {"memory_budget": 0.9}, "backends": backends}))
    return path, ["sim-a", "sim-b"]


def serve(config: Path, log: Path) -> tuple[subprocess.Popen[bytes], str]:
    port = yaml.safe_load(config.read_text()).get("port", 8080)
    env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "vllm_gateway", "serve", "--config", str(config)], cwd=ROOT,
                                env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    return proc, f"http://127.0.0.1:{port}"


def status(url: str) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(f"{url}/status", timeout=10).json()["backends"]}


def backend_of(url: str, model: str) -> str:
    return next(name for name, b in status(url).items() if model in b["models"])


def wait_settled(url: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"the gateway exited with {proc.returncode} while starting")
        try:
            if all(b["state"] in ("ready", "asleep") for b in status(url).values()):
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"the backends did not start within {timeout:g} s")


def first_token(sdk: OpenAI, model: str) -> float:
    began = time.perf_counter()
    stream = sdk.chat.completions.create(model=model, messages=[{"role": "user", "content": "Hello"}], max_tokens=4,
                                         stream=True)
    took = None
    for chunk in stream:
        if took is None and chunk.choices and chunk.choices[0].delta.content is not None:
            took = time.perf_counter() - began
    return took if took is not None else time.perf_counter() - began


def figures(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"p50": round(statistics.median(ordered), 3), "p90": round(ordered[int(0.9 * (len(ordered) - 1))], 3),
            "max": round(ordered[-1], 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", type=Path, help="a gateway configuration with two on-demand backends (default: simulated)")
    parser.add_argument("--models", nargs=2, help="the two models to alternate (default: the simulated ones)")
    parser.add_argument("--rounds", type=int, default=5, help="swaps to each model (default 5)")
    parser.add_argument("--wake-delay", type=float, default=0.5, help="simulated: seconds a wake-up takes (default 0.5)")
    parser.add_argument("--sleep-delay", type=float, default=0.2, help="simulated: seconds a sleep takes (default 0.2)")
    parser.add_argument("--sleep-level", type=int, default=1, choices=[1, 2], help="simulated: sleep level (default 1)")
    parser.add_argument("--start-timeout", type=float, default=1800.0, help="seconds to wait for the backends")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-swap-") as tmp:
        folder = Path(tmp)
        if args.config is None:
            config, models = simulated_config(folder, args.wake_delay, args.sleep_delay, args.sleep_level)
        else:
            config, models = args.config, args.models
            if not models:
                raise SystemExit("--config needs --models A B: two models of on-demand backends")
        proc, url = serve(config, folder / "gateway.log")
        try:
            wait_settled(url, proc, args.start_timeout)
            sdk = OpenAI(base_url=f"{url}/v1", api_key=os.environ.get("OPENAI_API_KEY", "unused"), max_retries=0,
                         timeout=args.start_timeout)
            names = {model: backend_of(url, model) for model in models}
            first_token(sdk, models[1])  # start with the second awake, so the first round swaps
            swap: list[float] = []
            wake: list[float] = []
            awake: list[float] = []
            for _ in range(args.rounds):
                for model in models:
                    swap.append(first_token(sdk, model))
                    wake.append(status(url)[names[model]]["residency"]["last_wake_s"] or 0.0)
                    awake.append(first_token(sdk, model))
            report: dict[str, Any] = {"mode": "simulated" if args.config is None else str(args.config),
                                      "swaps": len(swap), "swap_request_s": figures(swap), "wake_s": figures(wake),
                                      "awake_request_s": figures(awake)}
            if args.config is None:
                floor = args.wake_delay + args.sleep_delay
                report["simulated_sleep_plus_wake_s"] = floor
                report["gateway_cost_s"] = figures([s - floor - a for s, a in zip(swap, awake, strict=True)])
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
    print(f"{'':24}{'p50':>9}{'p90':>9}{'max':>9}")
    for key, label in (("swap_request_s", "swap request (TTFT)"), ("wake_s", "wake"), ("awake_request_s", "awake request"),
                       ("gateway_cost_s", "gateway's own cost")):
        if key in report:
            row = report[key]
            print(f"{label:24}{row['p50']:>8.3f}s{row['p90']:>8.3f}s{row['max']:>8.3f}s")
    print(json.dumps(report))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
