"""The gateway benchmark: the gateway against fast fake upstreams, side by side with direct access.

Layout (the issue's): the gateway (`vllm-gateway serve`, one worker) pinned to one core with
taskset; nginx (fixed vLLM JSON for two models), the paced-SSE server, wrk and the stream client
on the other core. Every load runs against the upstream directly and through the gateway,
interleaved, repeated; the table shows medians, gateway/direct ratios and the targets.

    make bench                      # or: .venv/bin/python bench/run.py
    .venv/bin/python bench/run.py --quick
    .venv/bin/python bench/run.py --profile     # also a py-spy profile of the small-body load

Results: bench/results/latest.json (and the table on stdout).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import contextlib

from bench import loads, nginx_upstream, report, shapes  # noqa: E402
from bench.procs import Processes, wait_port  # noqa: E402
from bench.procstat import TreeMeter  # noqa: E402

BEGAN = time.monotonic()
LOAD_BEFORE = os.getloadavg()  # other work on a 2-core machine skews every figure: recorded with them
PATH = "/v1/chat/completions"
COLD_IDLE_S = 5.0  # longer than the gateway keeps idle backend connections (4 s; vLLM's keep-alive is 5 s)


def log(message: str) -> None:
    print(f"[bench {time.monotonic() - BEGAN:6.1f}s] {message}", flush=True)


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def cpu_list(text: str) -> list[int]:
    cpus: list[int] = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        cpus.extend(range(int(low), int(high or low) + 1))
    return cpus


def tree_entry(tree: Path, workdir: Path) -> str:
    """Python code that runs the `vllm-gateway` command of the app/ folder in `tree`: as the
    package `vllm_gateway` (a link to it, ahead of the installed one on sys.path), or, for trees
    from before the package was renamed (absolute `from app...` imports), as `app`."""
    source = tree / "app"
    if "from app." in (source / "cli.py").read_text():
        return f"import sys; sys.path.insert(0, {str(tree)!r}); from app.cli import main; sys.exit(main())"
    links = Path(tempfile.mkdtemp(prefix="tree-", dir=workdir))
    (links / "vllm_gateway").symlink_to(source.resolve(), target_is_directory=True)
    return f"import sys; sys.path.insert(0, {str(links)!r}); from vllm_gateway.cli import main; sys.exit(main())"


class Bench:
    def __init__(self, args: argparse.Namespace, procs: Processes, workdir: Path) -> None:
        self.args, self.procs, self.workdir = args, procs, workdir
        self.results: dict = {"loads": {}, "streams": {}, "workers": {}}
        self.bodies: dict[str, list[Path]] = {}
        for size in ("small", "large"):
            self.bodies[size] = []
            for model in shapes.MODELS:
                path = workdir / f"{model}-{size}.json"
                path.write_bytes(shapes.request_body(model, size))
                self.bodies[size].append(path)
        self.load_cpus = args.load_cpus
        self.threads = len(cpu_list(args.load_cpus))

    # -- processes --------------------------------------------------------------------------
    def start_upstreams(self) -> None:
        self.nginx_ports = {free_port(): model for model in shapes.MODELS}
        argv = nginx_upstream.argv(self.workdir / "nginx", self.nginx_ports)
        proc = self.procs.start("nginx", loads.taskset(self.load_cpus, argv), stderr=subprocess.DEVNULL)
        for port in self.nginx_ports:
            wait_port("127.0.0.1", port, proc)
        self.sse_ports = {free_port(): model for model in shapes.MODELS}
        listen = [f"--listen={port}:{model}" for port, model in self.sse_ports.items()]
        argv = [sys.executable, "-m", "bench.sse_upstream", *listen,
                "--events", str(self.args.events), "--interval", str(self.args.interval)]
        proc = self.procs.start("sse", loads.taskset(self.load_cpus, argv), cwd=REPO)
        for port in self.sse_ports:
            wait_port("127.0.0.1", port, proc)
        log(f"upstreams up: nginx on {sorted(self.nginx_ports)}, paced SSE on {sorted(self.sse_ports)} "
            f"(cpus {self.load_cpus})")

    def start_gateway(self, ports: dict[int, str], workers: int, cpus: str,
                      prototype: str | None = None) -> tuple[subprocess.Popen, str, TreeMeter]:
        prototype = self.args.prototype if prototype is None else prototype
        port = free_port()
        config = {
            "host": "127.0.0.1",
            "port": port,
            "log_level": "warning",
            "backends": [
                {"name": f"b{index}", "url": f"http://127.0.0.1:{upstream}", "models": [model]}
                for index, (upstream, model) in enumerate(ports.items())
            ],
        }
        path = self.workdir / f"gateway-{port}.yaml"
        path.write_text(json.dumps(config, indent=2))  # JSON is YAML
        env = {k: v for k, v in os.environ.items() if not k.startswith("GATEWAY_")}
        if prototype.startswith("tree:"):
            # Another copy of app/ (e.g. `git archive HEAD app | tar -x -C /tmp/base`): A/B
            # against a committed state without touching the working tree.
            # `tree:DIR@PYTHON` runs it under another interpreter that has the gateway's
            # dependencies (e.g. a Python 3.12 virtual environment).
            tree, _, python = prototype[len("tree:"):].partition("@")
            command = [python or sys.executable, "-c", tree_entry(Path(tree), self.workdir)]
        elif prototype:
            raise SystemExit(f"--prototype takes tree:DIR or tree:DIR@PYTHON, not {prototype!r}")
        else:
            command = [str(Path(sys.executable).with_name("vllm-gateway"))]
        argv = loads.taskset(cpus, [*command, "serve", "--config", str(path), "--workers", str(workers)])
        logfile = open(self.workdir / f"gateway-{port}.log", "wb")
        proc = self.procs.start("gateway", argv, env=env, stdout=logfile, stderr=subprocess.STDOUT)
        logfile.close()
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"gateway exited with {proc.returncode}:\n"
                                   + (self.workdir / f"gateway-{port}.log").read_text()[-3000:])
            try:
                with urllib.request.urlopen(url + "/ready", timeout=2) as answer:
                    if answer.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("gateway not ready after 60 s")
            time.sleep(0.1)
        loaded = _native_modules(TreeMeter(proc.pid).pids())
        self.results.setdefault("gateway_native_modules", loaded)
        log(f"gateway up on :{port} (pid {proc.pid}, --workers {workers}, cpus {cpus}"
            + (f", prototype {prototype}" if prototype else "")
            + f"; loaded: {', '.join(k for k, v in loaded.items() if v) or 'no uvloop/httptools'})")
        return proc, url, TreeMeter(proc.pid)

    # -- request/response loads ----------------------------------------------------------------
    def request_loads(self) -> list[tuple[str, str, int]]:
        return [("small_c64", "small", self.args.connections), ("large_c64", "large", self.args.connections),
                ("small_c1", "small", 1)]

    def load(self, name: str, url: str, seconds: float, meter: TreeMeter | None = None) -> dict:
        """One run of a named request load against `url`."""
        size, connections = {n: (s, c) for n, s, c in self.request_loads()}[name]
        if connections == 1:
            return loads.latency(url, seconds, self.load_cpus, meter)
        return loads.wrk(url, PATH, self.bodies[size], connections, seconds, self.load_cpus, self.threads, meter)

    def profile(self, pid: int, name: str, load) -> None:
        from bench import profile

        log(f"profiling the gateway under {name} for {self.args.profile_seconds:g} s (py-spy)")
        self.results.setdefault("profile", {})[name] = profile.record(
            pid, load, self.args.profile_seconds, REPO / "bench" / "results", self.load_cpus, name,
            native=self.args.profile_native)

    def run_loads(self, gateway_url: str, meter: TreeMeter) -> None:
        direct_url = f"http://127.0.0.1:{next(iter(self.nginx_ports))}"
        for name, _size, _connections in self.request_loads():
            runs: dict[str, list[dict]] = {"direct": [], "gateway": []}
            self.results["loads"][name] = runs
            targets = {"direct": (direct_url, None), "gateway": (gateway_url, meter)}
            for target, (url, m) in targets.items():
                self.load(name, url, self.args.warmup)
            for rep in range(self.args.reps):
                order = ("direct", "gateway") if rep % 2 == 0 else ("gateway", "direct")
                for target in order:
                    url, m = targets[target]
                    result = self.load(name, url, self.args.duration, m)
                    runs[target].append(result)
                    extra = f", {result['cpu_us_per_request']:.0f} us CPU/request" if m else ""
                    errors = sum(result["errors"].values())
                    log(f"{name} rep {rep + 1}/{self.args.reps} {target:7}: {result['rps']:9,.0f} req/s, "
                        f"p50 {result['p50_ms']:.3f} ms, p99 {result['p99_ms']:.3f} ms{extra}"
                        + (f", {errors} errors" if errors else ""))

    # -- streams -----------------------------------------------------------------------------
    def run_streams(self, gateway_url: str, meter: TreeMeter) -> None:
        direct_url = f"http://127.0.0.1:{next(iter(self.sse_ports))}"
        targets = {"direct": (direct_url, None), "gateway": (gateway_url, meter)}
        for url, m in targets.values():
            # Warm-up at full size: code paths, and as many pooled backend connections as a run
            # uses (a gateway in service keeps them; one after an idle spell is measured below).
            loads.streams(url, self.args.streams, self.load_cpus)
        plan = [(self.args.streams, self.args.reps)]
        if self.args.many_streams:
            plan.append((self.args.many_streams, 1))
        for count, reps in plan:
            runs: dict[str, list[dict]] = {"direct": [], "gateway": []}
            self.results["streams"][str(count)] = runs
            for rep in range(reps):
                order = ("direct", "gateway") if rep % 2 == 0 else ("gateway", "direct")
                for target in order:
                    url, m = targets[target]
                    result = loads.streams(url, count, self.load_cpus, m)
                    runs[target].append(result)
                    first, whole = result["first_byte"], result["whole"]
                    extra = (f", {result['cpu_us_per_stream']:.0f} us CPU/stream, RSS peak {result['rss_peak_mb']:.0f} MB"
                             if m else "")
                    log(f"{count} streams rep {rep + 1}/{reps} {target:7}: {result['completed']}/{count} complete, "
                        f"first byte p50/p99 {first.get('p50_ms', 0):.0f}/{first.get('p99_ms', 0):.0f} ms, "
                        f"whole p50/p99 {whole.get('p50_ms', 0):.0f}/{whole.get('p99_ms', 0):.0f} ms{extra}"
                        + (f", errors {result['errors']}" if result["errors"] else ""))
        self.run_cold_streams(gateway_url, meter)
        name = f"streams_{self.args.streams}"
        if "streams" in self.args.profile or name in self.args.profile:
            self.profile(meter.pid, name, lambda: _repeated_streams(gateway_url, self.args.streams, self.load_cpus,
                                                                    self.args.profile_seconds))

    def run_cold_streams(self, gateway_url: str, meter: TreeMeter) -> None:
        """A burst after an idle spell: the gateway's idle backend connections have expired, so
        every stream also opens one (a TCP handshake on the gateway's core)."""
        runs: list[dict] = []
        self.results["streams_cold"] = {"idle_s": COLD_IDLE_S, "runs": runs}
        for rep in range(self.args.reps):
            time.sleep(COLD_IDLE_S)
            result = loads.streams(gateway_url, self.args.streams, self.load_cpus, meter)
            runs.append(result)
            first = result["first_byte"]
            log(f"{self.args.streams} streams after {COLD_IDLE_S:g} s idle, rep {rep + 1}/{self.args.reps}: "
                f"{result['completed']}/{self.args.streams} complete, first byte p50/p99 "
                f"{first.get('p50_ms', 0):.0f}/{first.get('p99_ms', 0):.0f} ms, "
                f"{result['cpu_us_per_stream']:.0f} us CPU/stream")

    # -- several workers ---------------------------------------------------------------------
    def run_workers(self, baseline: list[dict]) -> None:
        self.results["workers"]["1"] = baseline
        for workers in self.args.workers_scan:
            # By default a core each; `--workers-cpus 0` puts them all on the gateway's one core,
            # which measures what a second worker costs per request (shared metrics, accept
            # contention) where there is no free core to show the scaling itself.
            cpus = self.args.workers_cpus or f"0-{workers - 1}"
            shared = set(cpu_list(cpus)) & set(cpu_list(self.load_cpus))
            self.results["workers_note"] = (f"gateway cpus {cpus}, load cpus {self.load_cpus}"
                                            + (": shared" if shared else ""))
            proc, url, meter = self.start_gateway(self.nginx_ports, workers, cpus)
            try:
                loads.wrk(url, PATH, self.bodies["small"], self.args.connections, self.args.warmup,
                          self.load_cpus, self.threads)
                runs = []
                for rep in range(self.args.reps):
                    result = loads.wrk(url, PATH, self.bodies["small"], self.args.connections, self.args.duration,
                                       self.load_cpus, self.threads, meter)
                    runs.append(result)
                    log(f"--workers {workers} rep {rep + 1}/{self.args.reps}: {result['rps']:,.0f} req/s, "
                        f"{result['cpu_us_per_request']:.0f} us CPU/request ({self.results['workers_note']})")
                self.results["workers"][str(workers)] = runs
            finally:
                self.procs.stop(proc)

    # -- the whole run -------------------------------------------------------------------------
    def run(self) -> dict:
        self.start_upstreams()
        only = self.args.only
        if "loads" in only or "workers" in only:
            self.measure_requests()
        if "streams" in only:
            proc, url, meter = self.start_gateway(self.sse_ports, 1, self.args.gateway_cpus)
            try:
                self.run_streams(url, meter)
            finally:
                self.procs.stop(proc)
        if self.args.workers_scan and self.args.prototype:
            log("workers scan skipped: another app/ tree is measured with one worker only")
        elif self.args.workers_scan and "workers" in only and "small_c64" in self.results["loads"]:
            self.run_workers(self.results["loads"]["small_c64"]["gateway"])
        return self.results

    def measure_requests(self) -> None:
        proc, url, meter = self.start_gateway(self.nginx_ports, 1, self.args.gateway_cpus)
        time.sleep(1.0)
        self.results["rss_idle_mb"] = meter.rss() / 2**20
        log(f"gateway idle RSS {self.results['rss_idle_mb']:.1f} MB")
        try:
            self.run_loads(url, meter)
            for name, _, _ in self.request_loads():
                if name in self.args.profile:
                    self.profile(proc.pid, name, lambda: self.load(name, url, self.args.profile_seconds))
        finally:
            self.procs.stop(proc)


def _native_modules(pids: list[int]) -> dict[str, bool]:
    """Which C speedups the gateway's processes have mapped (uvicorn picks them silently when present)."""
    maps = ""
    for pid in pids:
        with contextlib.suppress(OSError):
            maps += Path(f"/proc/{pid}/maps").read_text()
    return {name: f"/{name}/" in maps for name in ("uvloop", "httptools", "orjson")}


def _repeated_streams(url: str, count: int, cpus: str, seconds: float) -> dict:
    """Stream runs back to back for about `seconds` (one run of 512 lasts ~1 s: too few samples),
    in the shape profile.record expects (requests answered)."""
    runs = []
    ends = time.monotonic() + seconds - 1.0
    while not runs or time.monotonic() < ends:
        runs.append(loads.streams(url, count, cpus))
    return {"runs": len(runs), "requests": sum(r["count"] for r in runs),
            "completed": sum(r["completed"] for r in runs)}


def setup(args: argparse.Namespace) -> None:
    if not args.no_setup:
        subprocess.run(["bash", str(REPO / "bench" / "setup.sh")], check=True)
    for tool in ("wrk", "taskset"):
        if shutil.which(tool) is None:
            raise SystemExit(f"bench: {tool} is missing; run bench/setup.sh")
    nginx_upstream.nginx_binary()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))  # inherited by every child


def meta(args: argparse.Namespace) -> dict:
    def text(argv: list[str]) -> str:
        try:
            done = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=10)
            return (done.stdout + done.stderr).strip()
        except (OSError, subprocess.TimeoutExpired):
            return ""

    modules = {}
    for name in ("uvloop", "httptools", "uvicorn", "httpx", "httpcore", "fastapi", "starlette", "orjson",
                 "prometheus_client"):
        try:
            from importlib.metadata import version

            modules[name] = version(name)
        except Exception:
            modules[name] = None
    cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), "")
    return {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "git": text(["git", "rev-parse", "--short", "HEAD"]),
        "git_dirty": bool(text(["git", "status", "--porcelain", "--", "app"])),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "load_average_before": LOAD_BEFORE,
        "load_average_after": os.getloadavg(),
        "python": platform.python_version(),
        "modules": modules,
        "nginx": text([nginx_upstream.nginx_binary(), "-v"]),
        "wrk": text(["wrk", "--version"]).splitlines()[0] if text(["wrk", "--version"]) else "",
        "options": {k: v for k, v in vars(args).items()},
    }


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Benchmark the gateway against direct access (see bench/NOTES.md).")
    parser.add_argument("--quick", action="store_true", help="one short repetition of each load (about 40 s)")
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per wrk run (default 5)")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds of discarded wrk load per target (default 1)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions of each measurement (default 3)")
    parser.add_argument("--connections", type=int, default=64, help="wrk connections for the c=64 loads")
    parser.add_argument("--streams", type=int, default=512, help="concurrent paced streams (default 512)")
    parser.add_argument("--many-streams", type=int, default=2000, help="a completion check with this many (0: skip)")
    parser.add_argument("--events", type=int, default=64, help="SSE events per stream (default 64)")
    parser.add_argument("--interval", type=float, default=0.010, help="seconds between SSE events (default 0.010)")
    parser.add_argument("--gateway-cpus", default="0", help="taskset cpu list for the gateway (default 0)")
    parser.add_argument("--load-cpus", default="1", help="taskset cpu list for upstreams and load generators (default 1)")
    parser.add_argument("--workers-scan", default="2", help="comma-separated worker counts to compare with 1 ('' to skip)")
    parser.add_argument("--workers-cpus", default="",
                        help="taskset cpu list for the several-workers runs (default 0..N-1, a core each; "
                             "0: all on the gateway core, for CPU per request where cores are few)")
    parser.add_argument("--profile", nargs="?", const="small_c64", default="",
                        help="also record py-spy profiles of these loads (comma-separated: small_c64, large_c64, "
                             "small_c1, streams; default small_c64); written to bench/results/profile-*.txt")
    parser.add_argument("--profile-seconds", type=float, default=10.0)
    parser.add_argument("--profile-native", action="store_true",
                        help="py-spy --native: C frames too (uvloop, httptools, system calls' callers)")
    parser.add_argument("--only", default="loads,streams,workers",
                        help="comma-separated parts to run: loads, streams, workers (default all)")
    parser.add_argument("--prototype", default="",
                        help="tree:DIR runs the app/ found in DIR instead of the working tree's (an A/B "
                             "against a committed state); tree:DIR@PYTHON under another interpreter; "
                             "workers=1 only")
    parser.add_argument("--no-setup", action="store_true", help="do not try to install nginx and wrk")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "latest.json"))
    args = parser.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.reps, args.many_streams = 2.0, 1.0, 1, 0
        args.workers_scan = ""
    args.profile = {part.strip() for part in args.profile.split(",") if part.strip()}
    args.only = {part.strip() for part in args.only.split(",") if part.strip()}
    args.workers_scan = [int(n) for n in str(args.workers_scan).split(",") if n.strip() and int(n) > 1]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    if (os.cpu_count() or 1) < 2:
        raise SystemExit("bench: needs at least 2 cpus (gateway on one, load on the other)")
    setup(args)
    os.sched_setaffinity(0, cpu_list(args.load_cpus))  # this script and its helpers stay off the gateway's core
    load = os.getloadavg()[0]
    if load > 0.5:
        log(f"note: load average is {load:.2f}; other work on this machine skews the figures")
    workdir = Path(tempfile.mkdtemp(prefix="vllm-gateway-bench-"))
    try:
        with Processes() as procs:
            results = Bench(args, procs, workdir).run()
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    results["meta"] = meta(args)
    results["checks"] = report.checks(results)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(results, indent=2, default=str))
    print()
    print(f"vllm-gateway benchmark: medians of {args.reps} run(s); gateway on cpu {args.gateway_cpus}, "
          f"upstreams and load on cpu {args.load_cpus}; wrk {args.duration:g} s per run; load average "
          f"{LOAD_BEFORE[0]:.2f} before, {os.getloadavg()[0]:.2f} after"
          + (f"; prototype {args.prototype}" if args.prototype else ""))
    print(report.table(results))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
