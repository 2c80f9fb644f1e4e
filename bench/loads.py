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


def _cpu(before: tuple[float, float, float], after: tuple[float, float, float], count: int, key: str) -> dict:
    """The gateway's CPU over a run (`TreeMeter.sample()` before and after), per request too."""
    cpu_s = after[0] - before[0]
    user, system = after[1] - before[1], after[2] - before[2]
    return {"cpu_s": cpu_s, key: cpu_s / max(1, count) * 1e6,
            "cpu_system_share": system / max(1e-9, user + system)}


def wrk(url: str, path: str, bodies: list[Path], connections: int, seconds: float, cpus: str,
        threads: int, meter: TreeMeter | None = None) -> dict:
    argv = taskset(cpus, [
        "wrk", f"-t{min(threads, connections)}", f"-c{connections}", f"-d{max(1, round(seconds))}s",
        "--timeout", "10s", "-s", str(BENCH / "post.lua"), url, "--", path, *map(str, bodies),
    ])
    before = meter.sample() if meter else None
    done = subprocess.run(argv, capture_output=True, text=True, timeout=seconds + 60)
    after = meter.sample() if meter else None
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
        result.update(_cpu(before, after, stats["requests"], "cpu_us_per_request"))
        result["cpu_share"] = result["cpu_s"] / seconds_run
    return result


def streams(url: str, count: int, cpus: str, meter: TreeMeter | None = None, timeout: float = 120.0) -> dict:
    argv = taskset(cpus, [sys.executable, "-m", "bench.streams", "--url", url, "--count", str(count),
                          "--timeout", str(timeout)])
    before = meter.sample() if meter else None
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
    after = meter.sample() if meter else None
    if proc.returncode != 0:
        raise RuntimeError(f"stream client failed ({proc.returncode}): {err.strip()[-2000:]}")
    result = json.loads(out)
    if meter:
        result.update(_cpu(before, after, count, "cpu_us_per_stream"))
        result["rss_peak_mb"] = peak / 2**20
    return result


def latency(url: str, seconds: float, cpus: str, meter: TreeMeter | None = None) -> dict:
    """Concurrency 1 with bench.latency (raw per-request times, no coordinated-omission correction)."""
    argv = taskset(cpus, [sys.executable, "-m", "bench.latency", "--url", url, "--seconds", str(seconds)])
    before = meter.sample() if meter else None
    done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=seconds + 60)
    after = meter.sample() if meter else None
    if done.returncode != 0:
        raise RuntimeError(f"latency client failed ({done.returncode}): {done.stderr.strip()[-2000:]}")
    result = json.loads(done.stdout)
    result["errors"] = {"status": result["errors"]}
    if meter:
        result.update(_cpu(before, after, result["requests"], "cpu_us_per_request"))
        result["cpu_share"] = result["cpu_s"] / seconds
    return result
