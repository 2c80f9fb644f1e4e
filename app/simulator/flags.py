"""The `vllm serve` flags `vllm-gateway simulate` accepts, so a launcher can start the simulator
where it would start vLLM, and the simulator's own timing flags. vLLM's boolean flags take
`--no-` forms as vLLM's do; `--kv-cache-memory-bytes` is accepted and ignored (no GPU memory)."""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any

from .config import MAX_LORA_RANKS, LoRAModule, environment_flags, parse_lora_module


def add_vllm_flags(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--enable-sleep-mode", action=argparse.BooleanOptionalAction, default=False,
                        help="let a sleep free GPU memory (without it a sleep only pauses), as vLLM's")
    parser.add_argument("--enable-lora", action=argparse.BooleanOptionalAction, default=False,
                        help="serve LoRA adapters (--lora-modules, and runtime loading with "
                             "VLLM_ALLOW_RUNTIME_LORA_UPDATING=1)")
    parser.add_argument("--max-loras", type=int, default=1, help="distinct adapters in one batch (default 1)")
    parser.add_argument("--max-lora-rank", type=int, default=16, choices=MAX_LORA_RANKS,
                        help="largest adapter rank accepted (default 16)")
    parser.add_argument("--max-cpu-loras", type=int, help="adapters kept in CPU memory (default: --max-loras)")
    parser.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                        help='adapters loaded at start: name=path or {"name": ..., "path": ..., "base_model_name": ...}')
    parser.add_argument("--kv-cache-memory-bytes", help="accepted and ignored (as a launched vLLM gets it)")
    parser.add_argument("--distributed-executor-backend", choices=["uni", "mp"], default="uni",
                        help="how worker errors are worded: uni (one GPU, default) or mp (vLLM's CPU build)")
    parser.add_argument("--sleep-delay", type=float, default=0.0, help="seconds a level 1/2 sleep takes (default 0)")
    parser.add_argument("--wake-delay", type=float, default=0.0, help="seconds each wake-up of memory takes (default 0)")
    parser.add_argument("--lora-load-delay", type=float, default=0.0,
                        help="seconds reading an adapter from disk takes (default 0)")


def vllm_settings(args: argparse.Namespace, env: Mapping[str, str]) -> dict[str, Any]:
    """SimulatorConfig fields from the flags above and vLLM's environment variables."""
    modules: list[LoRAModule] = [parse_lora_module(item) for item in args.lora_modules if item]
    return {
        **environment_flags(env),
        "enable_sleep_mode": args.enable_sleep_mode, "sleep_delay": args.sleep_delay, "wake_delay": args.wake_delay,
        "enable_lora": args.enable_lora, "max_loras": args.max_loras, "max_lora_rank": args.max_lora_rank,
        "max_cpu_loras": args.max_cpu_loras, "lora_modules": modules, "lora_load_delay": args.lora_load_delay,
        "executor_backend": args.distributed_executor_backend,
    }


