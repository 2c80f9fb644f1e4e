"""Where the gateway's CPU goes under load: a py-spy recording, summarised by layer.

py-spy samples the running gateway from outside (no code change, no restart) and is installed
into a scratch virtual environment outside the repository (~/.cache/vllm-gateway-bench/tools).
Each sample's innermost Python frame names the layer that was running: uvicorn's HTTP parsing,
Starlette/FastAPI routing and middleware, our app/, httpx, httpcore, h11, anyio, asyncio/uvloop,
prometheus_client, logging. Time in C extensions (orjson, httptools, uvloop) is charged to the
Python line that called them.

    python -m bench.profile summarize bench/results/profile-small_c64.txt
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

TOOLS = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "vllm-gateway-bench" / "tools"

# Most specific first: the first pattern found in a frame's file names its layer.
LAYERS = (
    ("app (our code)", re.compile(r"(^|/)app/")),
    ("uvicorn http", re.compile(r"uvicorn/")),
    ("fastapi", re.compile(r"fastapi/")),
    ("starlette", re.compile(r"starlette/")),
    ("httpx", re.compile(r"httpx/")),
    ("httpcore", re.compile(r"httpcore/")),
    ("h11", re.compile(r"h11/")),
    ("anyio", re.compile(r"anyio/")),
    ("prometheus_client", re.compile(r"prometheus_client/")),
    ("tenacity", re.compile(r"tenacity/")),
    ("logging", re.compile(r"logging/")),
    ("asyncio/uvloop", re.compile(r"asyncio/|uvloop|<frozen|selectors|ssl\.py|socket\.py")),
)
_FRAME = re.compile(r"^(?P<func>.*) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")


def py_spy() -> Path:
    binary = TOOLS / "bin" / "py-spy"
    if not binary.exists():
        print(f"[profile] installing py-spy into {TOOLS} (outside the repository)", flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(TOOLS)], check=True)
        subprocess.run([str(TOOLS / "bin" / "pip"), "install", "--quiet", "--disable-pip-version-check", "py-spy"],
                       check=True)
    return binary


def layer_of(frame: str) -> str:
    match = _FRAME.match(frame)
    where = match.group("file") if match else frame
    for name, pattern in LAYERS:
        if pattern.search(where):
            return name
    return "other"


def parse(path: Path) -> list[tuple[list[str], int]]:
    stacks = []
    for line in path.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if stack and count.isdigit():
            stacks.append((stack.split(";"), int(count)))
    return stacks


def summarize(path: Path, requests: int | None = None, cpu_s: float | None = None, top: int = 25) -> dict:
    stacks = parse(path)
    total = sum(count for _, count in stacks) or 1
    self_layer: Counter[str] = Counter()
    incl_layer: Counter[str] = Counter()
    self_func: Counter[str] = Counter()
    incl_func: Counter[str] = Counter()
    for frames, count in stacks:
        self_layer[layer_of(frames[-1])] += count
        self_func[_function(frames[-1])] += count
        for name in {layer_of(f) for f in frames}:
            incl_layer[name] += count
        for name in {_function(f) for f in frames}:
            incl_func[name] += count
    # Per-request microseconds: the share of samples times the measured CPU per request.
    per_request = (cpu_s / requests * 1e6) if requests and cpu_s else None

    def scaled(counter: Counter[str], n: int) -> list[dict]:
        out = []
        for name, count in counter.most_common(n):
            share = count / total
            out.append({"name": name, "share": round(share, 4),
                        "us_per_request": round(share * per_request, 1) if per_request else None})
        return out

    return {
        "samples": total,
        "cpu_us_per_request": per_request,
        "self_by_layer": scaled(self_layer, 20),
        "inclusive_by_layer": scaled(incl_layer, 20),
        "self_by_function": scaled(self_func, top),
        "inclusive_by_function": scaled(incl_func, top),
    }


def _function(frame: str) -> str:
    match = _FRAME.match(frame)
    if not match:
        return frame
    return f"{match.group('func')} ({match.group('file')})"


def render(summary: dict) -> str:
    lines = [f"samples: {summary['samples']}, CPU per request: "
             + (f"{summary['cpu_us_per_request']:.0f} us" if summary["cpu_us_per_request"] else "?")]
    for key, title in (("self_by_layer", "self time by layer"), ("inclusive_by_layer", "inclusive time by layer"),
                       ("self_by_function", "self time by function"),
                       ("inclusive_by_function", "inclusive time by function")):
        lines.append(f"\n{title}:")
        for row in summary[key]:
            us = f"{row['us_per_request']:7.1f} us/req" if row["us_per_request"] is not None else ""
            lines.append(f"  {row['share'] * 100:5.1f}%  {us}  {row['name']}")
    return "\n".join(lines)


def record(pid: int, load: Callable[[], dict], seconds: float, outdir: Path, cpus: str,
           name: str = "small_c64", native: bool = False) -> dict:
    """Run `load` (which reports requests and CPU) while py-spy samples `pid`; save and summarise."""
    binary = py_spy()
    outdir.mkdir(parents=True, exist_ok=True)
    raw = outdir / f"profile-{name}.txt"
    argv = ["taskset", "-c", cpus, str(binary), "record", "--pid", str(pid), "--format", "raw", "--rate", "200",
            "--duration", str(int(seconds)), "--output", str(raw)]
    # --native needs the process stopped while sampling (slower, but C frames show up)
    argv.append("--native" if native else "--nonblocking")
    spy = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    time.sleep(0.5)
    from bench.procstat import TreeMeter

    meter = TreeMeter(pid)
    before = meter.cpu()
    result = load()
    cpu_s = meter.cpu() - before
    _, err = spy.communicate(timeout=seconds + 60)
    if spy.returncode != 0 or not raw.exists():
        print(f"[profile] py-spy failed ({spy.returncode}): {err.strip()[-1000:]}", flush=True)
        return {"error": err.strip()[-1000:]}
    summary = summarize(raw, result["requests"], cpu_s)
    summary["load"] = result
    text = render(summary)
    (outdir / f"profile-{name}.summary.txt").write_text(text + "\n")
    print(text, flush=True)
    return summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    show = sub.add_parser("summarize", help="summarise a py-spy raw (collapsed) file")
    show.add_argument("file")
    show.add_argument("--requests", type=int)
    show.add_argument("--cpu-seconds", type=float)
    show.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    print(render(summarize(Path(args.file), args.requests, args.cpu_seconds, args.top)))


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    main()
