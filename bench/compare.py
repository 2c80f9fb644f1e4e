"""A/B: several gateway variants side by side, runs interleaved, so a busy machine skews them alike.

Every variant runs at once (all pinned to the gateway core; idle ones cost nothing), and each
repetition loads them in rotating order. The figure to trust on a shared machine is the
gateway's own CPU per request (from /proc); req/s also depends on what else runs on its core.

    mkdir -p /tmp/base && git archive HEAD app | tar -x -C /tmp/base   # the last commit's app/
    .venv/bin/python bench/compare.py --variants tree:/tmp/base,stock --loads small_c64,small_c1,streams --reps 5

A variant is `stock` (the installed `vllm-gateway`, i.e. the working tree) or `tree:DIR` (the app/
package found in DIR, e.g. the last commit's: `git archive HEAD app | tar -x -C /tmp/base`, then
`--variants tree:/tmp/base,stock`). `tree:DIR@PYTHON` runs that app/ under another interpreter
that has the gateway's dependencies, e.g. `tree:/tmp/base@/tmp/venv312/bin/python`.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loads  # noqa: E402
from bench.procs import Processes  # noqa: E402
from bench.run import Bench, cpu_list, log, parse, setup  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variants", default="stock",
                        help="comma-separated: stock or tree:DIR (see above)")
    parser.add_argument("--loads", default="small_c64,large_c64,small_c1",
                        help="comma-separated: small_c64, large_c64, small_c1, streams")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=512)
    parser.add_argument("--events", type=int, default=64, help="SSE events per stream (default 64)")
    parser.add_argument("--gateway-cpus", default="0")
    parser.add_argument("--load-cpus", default="1")
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "compare.json"))
    opts = parser.parse_args()
    args = parse(["--gateway-cpus", opts.gateway_cpus, "--load-cpus", opts.load_cpus, "--streams", str(opts.streams),
                  "--events", str(opts.events)])
    setup(args)
    os.sched_setaffinity(0, cpu_list(opts.load_cpus))
    variants = [v.strip() for v in opts.variants.split(",") if v.strip()]
    wanted = [w.strip() for w in opts.loads.split(",") if w.strip()]
    workdir = Path(tempfile.mkdtemp(prefix="vllm-gateway-compare-"))
    results: dict[str, dict[str, list[dict]]] = {w: {v: [] for v in variants} for w in wanted}
    try:
        with Processes() as procs:
            bench = Bench(args, procs, workdir)
            bench.start_upstreams()
            plain = {}
            streaming = {}
            for variant in variants:
                if variant != "stock" and not variant.startswith("tree:"):
                    raise SystemExit(f"unknown variant {variant!r}: use stock or tree:DIR")
                prototype = "" if variant == "stock" else variant
                if any(w != "streams" for w in wanted):
                    plain[variant] = bench.start_gateway(bench.nginx_ports, 1, opts.gateway_cpus, prototype)
                if "streams" in wanted:
                    streaming[variant] = bench.start_gateway(bench.sse_ports, 1, opts.gateway_cpus, prototype)
            for rep in range(opts.reps):
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                for load in wanted:
                    for variant in order:
                        if load == "streams":
                            _, url, meter = streaming[variant]
                            if rep == 0:
                                loads.streams(url, 64, opts.load_cpus)
                            result = loads.streams(url, opts.streams, opts.load_cpus, meter)
                            result["cpu_us_per_request"] = result["cpu_us_per_stream"]
                            summary = (f"{result['completed']}/{opts.streams} complete, first byte p99 "
                                       f"{result['first_byte'].get('p99_ms', 0):.0f} ms, whole p50 "
                                       f"{result['whole'].get('p50_ms', 0):.0f} ms")
                        else:
                            _, url, meter = plain[variant]
                            if rep == 0:
                                bench.load(load, url, 1)
                            result = bench.load(load, url, opts.duration, meter)
                            summary = (f"{result['rps']:,.0f} req/s, p50 {result['p50_ms']:.3f} ms, "
                                       f"p99 {result['p99_ms']:.3f} ms")
                        results[load][variant].append(result)
                        log(f"rep {rep + 1}/{opts.reps} {load:9} {variant:28}: {summary}, "
                            f"{result['cpu_us_per_request']:.0f} us CPU/request (busy {result.get('cpu_share', 0):.2f})")
    except KeyboardInterrupt:
        log("interrupted; every process started was stopped")
        return 130
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"medians of {opts.reps} interleaved runs; gateway on cpu {opts.gateway_cpus}, load on cpu {opts.load_cpus}; "
          f"load average now {os.getloadavg()[0]:.2f}")
    header = f"{'load':10} {'variant':28} {'CPU us/req':>10} {'req/s':>9} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    print("-" * len(header))
    for load in wanted:
        base = None
        for variant in variants:
            runs = results[load][variant]
            cpu = statistics.median(r["cpu_us_per_request"] for r in runs)
            base = base or cpu
            if load == "streams":
                rps = "-"
                p50 = statistics.median(r["whole"].get("p50_ms", 0) for r in runs)
                p99 = statistics.median(r["first_byte"].get("p99_ms", 0) for r in runs)
            else:
                rps = f"{statistics.median(r['rps'] for r in runs):,.0f}"
                p50 = statistics.median(r["p50_ms"] for r in runs)
                p99 = statistics.median(r["p99_ms"] for r in runs)
            print(f"{load:10} {variant:28} {cpu:10,.0f} {rps:>9} {p50:8.2f} {p99:8.2f}   ({cpu / base:.2f}x CPU)")
    if "streams" in wanted:
        print("(streams: p50 column is whole-stream p50, p99 column is first-byte p99)")
    out = Path(opts.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"variants": variants, "results": results, "load_average_after": os.getloadavg()},
                              indent=2, default=str))
    print(f"\nresults: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
