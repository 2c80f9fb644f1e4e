"""The operator page open vs not: the gateway's CPU per request while a headless browser watches /ui.

Gateways of the working tree run side by side on the gateway core (idle ones cost nothing); a
headless chromium (Debian's, through Playwright) keeps `/ui` open on one of them for the whole run.
Loads are interleaved in rotating order, as in bench/compare.py. `--base DIR` adds the app/ of DIR
(e.g. main's: `git archive main app | tar -x -C /tmp/main`) as a third variant. Also measured: the
CPU an idle gateway spends per second with and without the page (the feed's tick).

    .venv/bin/python bench/page_open.py --reps 3 --loads small_c64,small_c1,streams --base /tmp/main
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench import loads  # noqa: E402
from bench.procs import Processes  # noqa: E402
from bench.run import Bench, cpu_list, log, parse, setup  # noqa: E402

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--loads", default="small_c64,small_c1", help="comma-separated: small_c64, large_c64, small_c1, streams")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--duration", type=float, default=3.0)
    parser.add_argument("--streams", type=int, default=512)
    parser.add_argument("--base", help="a folder holding another app/ to compare (e.g. main's)")
    parser.add_argument("--idle-seconds", type=float, default=10.0)
    opts = parser.parse_args()
    args = parse(["--streams", str(opts.streams)])
    setup(args)
    os.sched_setaffinity(0, cpu_list(args.load_cpus))  # the browser, a child of this process, runs there too
    wanted = [w.strip() for w in opts.loads.split(",") if w.strip()]
    variants = ["page closed", "page open"] + (["base (no page code)"] if opts.base else [])
    prototypes = {"page closed": "", "page open": "", "base (no page code)": f"tree:{opts.base}" if opts.base else ""}
    results: dict[str, dict[str, list[dict]]] = {w: {v: [] for v in variants} for w in wanted}
    workdir = Path(tempfile.mkdtemp(prefix="vllm-gateway-page-"))
    from playwright.sync_api import sync_playwright

    try:
        with Processes() as procs, sync_playwright() as playwright:
            bench = Bench(args, procs, workdir)
            bench.start_upstreams()
            plain = {v: bench.start_gateway(bench.nginx_ports, 1, args.gateway_cpus, prototypes[v]) for v in variants}
            streaming = ({v: bench.start_gateway(bench.sse_ports, 1, args.gateway_cpus, prototypes[v]) for v in variants}
                         if "streams" in wanted else {})
            browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"] if os.geteuid() == 0 else [])
            pages = []
            for gateways in (plain, streaming):
                if gateways:
                    page = browser.new_page()
                    page.goto(gateways["page open"][1] + "/ui")
                    page.wait_for_selector("#live.live", timeout=20_000)
                    pages.append(page)
            log(f"page open on {len(pages)} gateway(s)")
            idle = {}
            for variant in variants:
                meter = plain[variant][2]
                before = meter.cpu()
                time.sleep(opts.idle_seconds)
                idle[variant] = (meter.cpu() - before) / opts.idle_seconds * 1e3
                log(f"idle {variant}: {idle[variant]:.2f} ms CPU per second")
            for rep in range(opts.reps):
                order = variants[rep % len(variants):] + variants[:rep % len(variants)]
                for load in wanted:
                    for variant in order:
                        if load == "streams":
                            _, url, meter = streaming[variant]
                            if rep == 0:
                                loads.streams(url, 64, args.load_cpus)
                            result = loads.streams(url, opts.streams, args.load_cpus, meter)
                            result["cpu_us_per_request"] = result["cpu_us_per_stream"]
                        else:
                            _, url, meter = plain[variant]
                            if rep == 0:
                                bench.load(load, url, 1)
                            result = bench.load(load, url, opts.duration, meter)
                        results[load][variant].append(result)
                        log(f"rep {rep + 1}/{opts.reps} {load:9} {variant:20}: {result['cpu_us_per_request']:.0f} us CPU/request")
            renders = pages[0].evaluate("document.body.dataset.renders")
            log(f"the open page rendered {renders} snapshots meanwhile")
            browser.close()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print()
    print(f"medians of {opts.reps} interleaved runs; gateway on cpu {args.gateway_cpus}, load and browser on cpu "
          f"{args.load_cpus}; load average now {os.getloadavg()[0]:.2f}")
    print(f"{'load':10} {'variant':20} {'CPU us/req':>10} {'req/s':>9} {'p99 ms':>8}")
    for load in wanted:
        base = None
        for variant in variants:
            runs = results[load][variant]
            cpu = statistics.median(r["cpu_us_per_request"] for r in runs)
            base = base or cpu
            rps = "-" if load == "streams" else f"{statistics.median(r['rps'] for r in runs):,.0f}"
            p99 = statistics.median((r["first_byte"].get("p99_ms", 0) if load == "streams" else r["p99_ms"]) for r in runs)
            print(f"{load:10} {variant:20} {cpu:10,.0f} {rps:>9} {p99:8.2f}   ({cpu / base:.2f}x CPU)")
    print("idle gateway CPU per second: " + ", ".join(f"{v} {ms:.2f} ms" for v, ms in idle.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
