"""The `vllm-gateway` command: argument parsing only; the runtime lives in the other modules."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import shlex
import sys
from pathlib import Path

from . import __version__
from .gpu.nvml import nvml_totals
from .planner.plan import Plan, planned_backend
from .planner.render import plan_line
from .planner.startup import plan_gateway
from .residency.budget import refusals as residency_refusals
from .settings import KEEP_ALIVE_ENV, VLLM_KEEP_ALIVE, ConfigError, Settings, load_settings
from .simulator.flags import add_vllm_flags, vllm_settings


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    try:
        return args.run(args)
    except ConfigError as exc:
        print(f"vllm-gateway: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vllm-gateway",
        description="One OpenAI-compatible endpoint for several vLLM servers, routed by `model`.",
    )
    parser.add_argument("--version", action="version", version=f"vllm-gateway {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    serve = commands.add_parser("serve", help="run the gateway (and launch backends that have a `launch:` section)")
    serve.add_argument("--config", help="YAML configuration file (default: $GATEWAY_CONFIG; settings may also come "
                                        "from GATEWAY_* variables alone)")
    serve.add_argument("--host", help="address to listen on (default 0.0.0.0)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument("--workers", type=int, help="gateway worker processes (default 1)")
    serve.add_argument("--log-level", help="debug, info, warning or error (default info)")
    serve.set_defaults(run=_serve)

    check = commands.add_parser("check-config", help="validate a configuration and print the routing table")
    check.add_argument("--config", help="YAML configuration file (default: $GATEWAY_CONFIG)")
    check.set_defaults(run=_check_config)

    plan = commands.add_parser("plan", help="each launched backend's GPU memory, from its model's own files")
    plan.add_argument("--config", help="YAML configuration file (default: $GATEWAY_CONFIG)")
    plan.add_argument("--gpu-memory", help="each GPU's total memory, e.g. 48GB (decimal), 45GiB or 45.5G (binary); "
                                           "default: gpu.memory, else what NVML finds")
    plan.add_argument("--json", action="store_true", help="print the plan as JSON")
    plan.set_defaults(run=_plan)

    status = commands.add_parser("status", help="a running gateway's /status as a table (for a terminal over SSH)")
    status.add_argument("--url", default=os.environ.get("VLLM_GATEWAY_URL", "http://127.0.0.1:8080"),
                        help="the gateway (default: $VLLM_GATEWAY_URL, else http://127.0.0.1:8080)")
    status.add_argument("--key-env", default="VLLM_GATEWAY_KEY", metavar="NAME",
                        help="environment variable holding the key to send (default VLLM_GATEWAY_KEY): a client key, "
                             "or the admin or metrics key; kept out of your shell history")
    status.add_argument("--key", help="the key itself (prefer --key-env: a flag stays in shell history and ps)")
    status.add_argument("--json", action="store_true", help="print the /status document as it came")
    status.add_argument("--watch", type=float, metavar="SECONDS", help="redraw every SECONDS until Ctrl-C")
    status.set_defaults(run=_status)

    demo = commands.add_parser("demo", help="two simulated vLLM backends and the gateway in front of them (no GPU needed)")
    demo.add_argument("--host", default="127.0.0.1", help="address of the gateway (default 127.0.0.1)")
    demo.add_argument("--port", type=int, default=8080, help="port of the gateway (default 8080)")
    demo.set_defaults(run=_demo)

    simulate = commands.add_parser("simulate", help="run one simulated vLLM OpenAI server")
    simulate.add_argument("--model", action="append", required=True, help="served model name (repeat for several)")
    simulate.add_argument("--kind", choices=["chat", "embedding"], default="chat")
    simulate.add_argument("--host", default="127.0.0.1")
    simulate.add_argument("--port", type=int, default=8000)
    simulate.add_argument("--token-delay", type=float, default=0.0, help="seconds between generated tokens (default 0)")
    simulate.add_argument("--max-model-len", type=int, default=512)
    simulate.add_argument("--lora", action="append", default=[], help="name of a LoRA adapter to list (repeatable)")
    simulate.add_argument("--api-key", help="require this Bearer key on /v1 routes, as vLLM's --api-key does")
    # vLLM's own flags, so a `launch.command` can start the simulator where vLLM would run.
    simulate.add_argument("--served-model-name", nargs="+", help="names to serve instead of --model (as vLLM)")
    simulate.add_argument("--gpu-memory-utilization", type=float, help="accepted and ignored (as a launched vLLM gets it)")
    add_vllm_flags(simulate)  # sleep mode, LoRA, and the simulator's delays
    simulate.set_defaults(run=_simulate)
    return parser


def _configure_logging(level: str) -> None:
    logging.basicConfig(level=level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    if level.lower() != "debug":  # httpx logs every health probe at info
        logging.getLogger("httpx").setLevel(logging.WARNING)


def _serve(args: argparse.Namespace) -> int:
    from .http import serving

    settings = load_settings(args.config, host=args.host, port=args.port, workers=args.workers, log_level=args.log_level)
    _configure_logging(settings.log_level)
    _raise_open_file_limit()
    for note in settings.warnings():
        logging.getLogger("vllm_gateway").warning(note)
    options = serving.options(fast_path=settings.fast_path, access_log=settings.access_log,
                              log_level=settings.log_level.lower(), graceful=settings.shutdown_grace)
    if settings.workers == 1:
        from .gateway import create_app
        from .metrics.multiprocess import clear_chosen_dir

        memory_plan = None
        if any(b.launch for b in settings.backends):
            memory_plan = plan_gateway(settings)
            for planned in memory_plan.backends:
                logging.getLogger("vllm_gateway").info("plan: %s", plan_line(planned))
            refusals = residency_refusals(settings, memory_plan)
            for line in refusals:
                print(f"vllm-gateway: {line}", file=sys.stderr)
            if refusals:
                return 2  # nothing launched: `vllm-gateway plan` shows the whole table
        clear_chosen_dir()  # before the app's metrics exist: no counts from an earlier run
        app = create_app(settings, plan=memory_plan)
        serving.tune_gc()
        try:
            serving.run(app, settings.host, settings.port, **options)
        finally:
            # uvicorn skips the app's shutdown on a forced exit (a second Ctrl-C): end what is left.
            if app.state.supervisor is not None:
                app.state.supervisor.kill_now()
        return 0
    # Several workers import the app themselves: hand them the same configuration.
    if args.config:
        os.environ["GATEWAY_CONFIG"] = str(Path(args.config).resolve())
    for key, value in (("HOST", args.host), ("PORT", args.port), ("LOG_LEVEL", args.log_level)):
        if value is not None:
            os.environ[f"GATEWAY_{key}"] = str(value)
    from .metrics.multiprocess import worker_metrics_dir

    with worker_metrics_dir():  # before the workers import prometheus_client
        serving.run_workers("vllm_gateway.gateway:app_from_environment", settings.workers, settings.host,
                            settings.port, **options)
    return 0


def _raise_open_file_limit() -> None:
    """Each streamed request holds two sockets; the usual soft limit of 1024 caps a proxy early."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = 65536 if hard == resource.RLIM_INFINITY else hard
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))


def _check_config(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    memory_plan = plan_gateway(settings) if any(b.launch for b in settings.backends) else None
    print(routing_table(settings, memory_plan))
    for note in settings.warnings():
        print(f"warning: {note}")
    refusals = residency_refusals(settings, memory_plan) if memory_plan else []
    for line in refusals:
        print(f"vllm-gateway: {line}", file=sys.stderr)
    if refusals:
        return 2
    print("configuration OK")
    return 0


def _plan(args: argparse.Namespace) -> int:
    import json

    from .planner.plan import PlanError
    from .planner.render import plan_json, plan_table
    from .planner.sizes import SIZE_HELP, parse_size

    settings = load_settings(args.config)
    if not any(b.launch for b in settings.backends):
        print("vllm-gateway plan: no backend has a `launch:` section; the planner plans only the vLLM processes "
              "the gateway starts", file=sys.stderr)
        return 2
    memory = None
    if args.gpu_memory is not None:
        try:
            memory = parse_size(args.gpu_memory)
        except ValueError as exc:
            print(f"vllm-gateway plan: --gpu-memory {exc}; expected {SIZE_HELP}", file=sys.stderr)
            return 2
    if memory is None and settings.gpu.memory is None and not nvml_totals():
        print("vllm-gateway plan: no GPU found through NVML and no --gpu-memory: give the GPU's size, e.g. "
              "--gpu-memory 48GB (or set gpu.memory)", file=sys.stderr)
        return 2
    try:
        memory_plan = plan_gateway(settings, memory, strict=True)
    except PlanError as exc:
        print(f"vllm-gateway plan: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(plan_json(memory_plan), indent=2) if args.json else plan_table(memory_plan))
    for line in memory_plan.refusals():
        print(f"vllm-gateway plan: {line}", file=sys.stderr)
    return 2 if memory_plan.refusals() else 0


def _status(args: argparse.Namespace) -> int:
    import json
    import time

    from .status_table import StatusUnavailable, fetch_status, render_status

    key = args.key or os.environ.get(args.key_env) or None
    while True:
        try:
            document = fetch_status(args.url, key)
        except StatusUnavailable as exc:
            print(f"vllm-gateway status: {exc}", file=sys.stderr)
            return 1
        text = json.dumps(document, indent=2) if args.json else render_status(document)
        if not args.watch:
            print(text)
            return 0
        print("\x1b[H\x1b[2J" + text, flush=True)  # home and clear: a redraw, as `watch` does
        time.sleep(args.watch)


def routing_table(settings: Settings, memory_plan: Plan | None = None) -> str:
    lines = [f"gateway listens on {settings.host}:{settings.port} with {len(settings.backends)} backend(s)"]
    if not settings.backends:
        lines.append("  (no backends: every model request will answer 404)")
    for backend in settings.backends:
        urls = ", ".join(backend.all_urls)
        lines.append(f"  backend {backend.name} -> {urls}")
        models = list(backend.models) or ([backend.launch.model] if backend.launch else [])
        lines.append(f"    models:  {', '.join(models) if models else '(learned from its /v1/models)'}")
        if backend.aliases:
            target = backend.served_model_name or "its first reported model"
            lines.append(f"    aliases: {', '.join(backend.aliases)} (sent upstream as {target})")
        if backend.launch and backend.launch.on_demand:
            launch = backend.launch
            how = f"swap: sleep (level {launch.sleep_level})" if launch.swap == "sleep" else "swap: restart"
            idle = f", idle_sleep {launch.idle_sleep:g} s" if launch.idle_sleep else ""
            lines.append(f"    residency: on_demand, {how}, min_awake {launch.min_awake:g} s{idle}, "
                         f"max_wait {launch.max_wait:g} s")
        if backend.launch:
            from .supervise.process import command_line  # the exact argv `serve` will run

            planned = memory_plan.backend(backend.name) if memory_plan else None
            launched = planned_backend(backend, planned) if planned else backend
            assert launched.launch is not None
            share = launched.launch.gpu_memory_utilization
            if share == "auto":  # no plan filled it in: show what vLLM would get, its own default share
                launched = launched.model_copy(update={"launch": launched.launch.model_copy(
                    update={"gpu_memory_utilization": None})})
            lines.append(f"    launch:  {shlex.join(command_line(launched))}"
                         + (f" (gpu_memory_utilization {share:g})" if isinstance(share, float) else "")
                         + (" (gpu_memory_utilization auto, not planned)" if share == "auto" else ""))
            if planned:
                lines.append(f"    {plan_line(planned)}")
    shares = settings.gpu_shares()
    on_demand = [b.name for b in settings.backends if b.launch and b.launch.on_demand]
    if on_demand:
        from .residency.budget import plan_figures, summary

        planned_shares, weights = plan_figures(memory_plan) if memory_plan else ({}, {})
        lines.append(f"  {summary(settings.residency_budget(planned_shares), on_demand)}")
        lines += [f"  {line}" for line in _host_ram_lines(settings, weights)]
    elif shares:
        lines.append(f"  GPU memory: {sum(shares.values()):.2f} of budget {settings.gpu.memory_budget:g}")
    if settings.default_model:
        lines.append(f"  requests without `model` go to {settings.default_model}")
    return "\n".join(lines)


def _host_ram_lines(settings: Settings, weights: dict[str, int]) -> list[str]:
    """Level-1 sleep keeps the weights in host RAM: what the sleeping backends may need at once."""
    from .residency.memory import HOST_HEADROOM, host_total

    level_one = [b.name for b in settings.backends if b.launch and b.launch.on_demand and b.launch.swap == "sleep"
                 and b.launch.sleep_level == 1]
    if not level_one:
        return []
    known = {name: weights[name] for name in level_one if name in weights}
    if not known:
        return [f"host RAM: level-1 sleep keeps the weights in host RAM; their size is unknown here (no plan of "
                f"{', '.join(level_one)}), so it is checked at each sleep only if a plan is given"]
    need = sum(known.values()) * HOST_HEADROOM
    total = host_total()
    have = f"this machine has {total / 2**30:.1f} GiB" if total else "this machine's RAM is unknown"
    line = (f"host RAM: level-1 sleep keeps the weights there: up to {need / 2**30:.1f} GiB with "
            f"{', '.join(known)} asleep together; {have}")
    if total and need > total:
        line += " (too little: a sleep that would not fit stops the process instead; consider sleep_level: 2)"
    return [line]


def _demo(args: argparse.Namespace) -> int:
    _configure_logging("warning")
    asyncio.run(_run_demo(args.host, args.port))
    return 0


async def _run_demo(host: str, port: int) -> None:
    from .gateway import create_app
    from .http.serving import bind, serve_together, server
    from .simulator import CHAT, EMBEDDING, Simulator, SimulatorConfig

    chat_sock, embed_sock = bind("127.0.0.1", 0), bind("127.0.0.1", 0)
    chat_url = f"http://127.0.0.1:{chat_sock.getsockname()[1]}"
    embed_url = f"http://127.0.0.1:{embed_sock.getsockname()[1]}"
    settings = Settings(
        host=host,
        port=port,
        backends=[
            {"name": "chat", "url": chat_url, "aliases": ["gpt-4o-mini"]},
            {"name": "embed", "url": embed_url, "aliases": ["text-embedding-3-small"]},
        ],
    )
    try:
        gateway_sock = bind(host, port)
    except OSError as exc:
        raise SystemExit(f"vllm-gateway demo: cannot listen on {host}:{port} ({exc.strerror}); try --port 8090") from None
    chat = Simulator(SimulatorConfig(models=["demo-chat"], kind=CHAT, token_delay=0.02, root="simulated/demo-chat"))
    embed = Simulator(SimulatorConfig(models=["demo-embed"], kind=EMBEDDING, root="simulated/demo-embed", embedding_dim=384))
    base = f"http://{host}:{port}/v1"
    print(_demo_banner(base, host, port), flush=True)
    await serve_together([
        (server(chat), chat_sock),
        (server(embed), embed_sock),
        (server(create_app(settings), log_level="info", fast_path=settings.fast_path), gateway_sock),
    ])


def _demo_banner(base: str, host: str, port: int) -> str:
    return f"""
vllm-gateway demo: two simulated vLLM backends behind one OpenAI endpoint
  base URL   {base}
  models     demo-chat (alias gpt-4o-mini), demo-embed (alias text-embedding-3-small)
  status     http://{host}:{port}/status    metrics http://{host}:{port}/metrics
  operator page  http://{host}:{port}/ui  (GPU, backends, activity, logs, a playground)

Try it:
  curl {base}/models
  curl {base}/chat/completions -H 'Content-Type: application/json' \\
       -d '{{"model": "demo-chat", "messages": [{{"role": "user", "content": "hello"}}], "stream": true}}'

  from openai import OpenAI
  client = OpenAI(base_url="{base}", api_key="unused")
  answer = client.chat.completions.create(model="demo-chat", messages=[{{"role": "user", "content": "hi"}}])
  print(answer.choices[0].message.content)
  print(len(client.embeddings.create(model="demo-embed", input="hello").data[0].embedding))

Press Ctrl-C to stop.
"""


def _simulate(args: argparse.Namespace) -> int:
    from .http import serving
    from .simulator import Simulator, SimulatorConfig

    _configure_logging("info")
    args.model = args.served_model_name or args.model
    try:  # vLLM's own start-up checks (flags, environment, --lora-modules) stop it the same way
        config = SimulatorConfig(models=args.model, kind=args.kind, token_delay=args.token_delay,
                                 max_model_len=args.max_model_len, lora_adapters=args.lora, api_key=args.api_key,
                                 **vllm_settings(args, os.environ))
        app = Simulator(config)
    except ValueError as exc:
        raise ConfigError(f"simulate: {exc}") from None
    print(f"simulated vLLM server ({args.kind}) serving {', '.join(args.model)} on http://{args.host}:{args.port}", flush=True)
    # Like vLLM: idle connections are closed after VLLM_HTTP_TIMEOUT_KEEP_ALIVE seconds (default 5).
    keep_alive = int(os.environ.get(KEEP_ALIVE_ENV, VLLM_KEEP_ALIVE))
    serving.run(app, args.host, args.port, log_level="warning", access_log=False,
                timeout_keep_alive=keep_alive)
    return 0
