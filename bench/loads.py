"""The two load generators, driven as pinned child processes: wrk (request/response) and
bench.streams (concurrent paced streams). Each call returns one measurement as a dict, with the
gateway's CPU seconds and peak RSS over the run when a meter is given."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

from bench.procstat import TreeMeter

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent


def taskset(cpus: str, argv: list[str]) -> list[str]:
    return ["taskset", "-c", cpus, *argv]


def wrk(url: str, path: str, bodies: list[Path], connections: int, seconds: float, cpus: str,
        threads: int, meter: TreeMeter | None = None) -> dict:
    argv = taskset(cpus, [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(BENCH / "post.lua"), url, "--", path, *map(str, bodies),
    ])
    before = meter.split() if meter else (0.0, 0.0)
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    after = meter.split() if meter else (0.0, 0.0)
    line = next((l for l in done.stdout.splitlines() if l.startswith("WRK_JSON ")), None)
    if done.returncode != 0 or line is None:
        raise RuntimeError(f"wrk failed ({done.returncode}): {done.stderr.strip() or done.stdout.strip()}")
    stats = json.loads(line[len("WRK_JSON "):])
    seconds_run = stats["duration_us"] / 1e6
    errors = sum(stats["errors"].values())
    result = {
        "requests": stats["requests"],
        "errors": stats["errors"],
        "rps": (stats["requests"] - errors) / seconds_run,
        "p50_ms": stats["p50_us"] / 1000,
        "p90_ms": stats["p90_us"] / 1000,
        "p99_ms": stats["p99_us"] / 1000,
        "mean_ms": stats["mean_us"] / 1000,
    }
    if meter:
        user, system = after[0] - before[0], after[1] - before[1]
        result["cpu_s"] = user + system
        result["cpu_us_per_request"] = (user + system) / max(1, stats["requests"]) * 1e6
        result["cpu_system_share"] = system / max(1e-9, user + system)
        result["cpu_share"] = (user + system) / seconds_run
    return result


def streams(url: str, count: int, cpus: str, meter: TreeMeter | None = None, timeout: float = 120.0) -> dict:
    argv = taskset(cpus, [sys.executable, "-m", "bench.streams", "--url", url, "--count", str(count),
                          "--timeout", str(timeout)])
    before = meter.split() if meter else (0.0, 0.0)
    proc = subprocess.Popen(argv, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = 0
    deadline = time.monotonic() + timeout + 60
    while proc.poll() is None:
        if meter:
            peak = max(peak, meter.rss())
        if time.monotonic() > deadline:
            proc.kill()
            break
        time.sleep(0.05)
    out, err = proc.communicate()
    after = meter.split() if meter else (0.0, 0.0)
    if proc.returncode != 0:
        raise RuntimeError(f"stream client failed ({proc.returncode}): {err.strip()[-2000:]}")
    result = json.loads(out)
    if meter:
        user, system = after[0] - before[0], after[1] - before[1]
        result["cpu_s"] = user + system
        result["cpu_us_per_stream"] = (user + system) / max(1, count) * 1e6
        result["cpu_system_share"] = system / max(1e-9, user + system)
        result["rss_peak_mb"] = peak / 2**20
    return result


def latency(url: str, seconds: float, cpus: str, meter: TreeMeter | None = None) -> dict:
    """Concurrency 1 with bench.latency (raw per-request times, no coordinated-omission correction)."""
    argv = taskset(cpus, [sys.executable, "-m", "bench.latency", "--url", url, "--seconds", str(seconds)])
    before = meter.split() if meter else (0.0, 0.0)
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=seconds + 60)
    after = meter.split() if meter else (0.0, 0.0)
    if done.returncode != 0:
        raise RuntimeError(f"latency client failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    result["errors"] = {"status": result["errors"]}
    if meter:
        user, system = after[0] - before[0], after[1] - before[1]
        result["cpu_s"] = user + system
        result["cpu_us_per_request"] = (user + system) / max(1, result["requests"]) * 1e6
        result["cpu_system_share"] = system / max(1e-9, user + system)
        result["cpu_share"] = (user + system) / seconds
    return result
