"""The vLLM flags in a backend's `launch.args` the gateway needs, read as vLLM's parser would.

vLLM uses argparse: `--flag value` and `--flag=value` both work, `--max_loras` is `--max-loras`,
and the last occurrence wins (the gateway relies on that: `launch.args` come after the flags it
adds itself). Read here: what changes a backend's memory (the planner) and its LoRA flags (the
adapter manager, `adapters.config`); everything else is left to vLLM.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .planner.sizes import vllm_int

# flag -> field; aliases as vLLM registers them (engine/arg_utils.py), plus the prefix
# abbreviation `--kv-cache-memory` that vLLM's own log message suggests.
_VALUED = {
    "--dtype": "dtype",
    "--kv-cache-dtype": "kv_cache_dtype",
    "--tensor-parallel-size": "tensor_parallel_size",
    "-tp": "tensor_parallel_size",
    "--pipeline-parallel-size": "pipeline_parallel_size",
    "-pp": "pipeline_parallel_size",
    "--data-parallel-size": "data_parallel_size",
    "-dp": "data_parallel_size",
    "--block-size": "block_size",
    "--kv-cache-memory-bytes": "kv_cache_memory_bytes",
    "--kv-cache-memory": "kv_cache_memory_bytes",
    "--max-model-len": "max_model_len",
    "--max-num-batched-tokens": "max_num_batched_tokens",
    "--max-num-seqs": "max_num_seqs",
    "--gpu-memory-utilization": "gpu_memory_utilization",
    "--device-memory-utilization": "gpu_memory_utilization",
    "--runner": "runner",
    "--convert": "convert",
    "--revision": "revision",
    "--quantization": "quantization",
    "-q": "quantization",
    "--max-loras": "max_loras",
    "--max-cpu-loras": "max_cpu_loras",
    "--max-lora-rank": "max_lora_rank",
    "--api-server-count": "api_server_count",
    "-asc": "api_server_count",
}
# Flags that take every value up to the next flag (argparse's nargs="+").
_LISTS = {"--lora-modules": "lora_modules"}
_SWITCHES = {
    "--enforce-eager": ("enforce_eager", True),
    "--no-enforce-eager": ("enforce_eager", False),
    "--disable-sliding-window": ("disable_sliding_window", True),
    "--no-disable-sliding-window": ("disable_sliding_window", False),
    "--disable-hybrid-kv-cache-manager": ("disable_hybrid_kv_cache_manager", True),
    "--no-disable-hybrid-kv-cache-manager": ("disable_hybrid_kv_cache_manager", False),
    "--enable-lora": ("enable_lora", True),
    "--no-enable-lora": ("enable_lora", False),
}
_INTS = {"tensor_parallel_size", "pipeline_parallel_size", "data_parallel_size", "block_size", "max_num_seqs",
         "max_loras", "max_cpu_loras", "max_lora_rank", "api_server_count"}
_HUMAN_INTS = {"kv_cache_memory_bytes", "max_num_batched_tokens"}


class BadLaunchArgs(ValueError):
    """A flag vLLM would refuse too; the message names it."""


@dataclass(frozen=True)
class VllmFlags:
    dtype: str = "auto"
    kv_cache_dtype: str = "auto"
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    data_parallel_size: int = 1
    block_size: int | None = None
    kv_cache_memory_bytes: int | None = None
    max_model_len: int | None = None
    max_model_len_auto: bool = False  # `--max-model-len auto` / -1: vLLM picks what fits
    max_num_batched_tokens: int | None = None
    max_num_seqs: int | None = None
    gpu_memory_utilization: float | None = None
    enforce_eager: bool = False
    runner: str | None = None
    convert: str | None = None
    revision: str | None = None
    quantization: str | None = None
    disable_sliding_window: bool = False
    disable_hybrid_kv_cache_manager: bool = False
    enable_lora: bool = False
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    max_lora_rank: int | None = None
    api_server_count: int | None = None
    lora_modules: tuple[str, ...] = ()  # as given: `name=path` or vLLM's JSON form


def read_flags(args: list[str]) -> VllmFlags:
    """The flags in `args` the gateway reads (the last one wins, as in argparse)."""
    found: dict[str, Any] = {}  # field -> value, each converted to its field's type by _convert
    index = 0
    while index < len(args):
        token = args[index]
        name, eq, inline = token.partition("=")
        if name.startswith("--"):
            name = "--" + name[2:].replace("_", "-")  # vLLM's parser takes --max_loras as --max-loras
        if name in _LISTS:
            values = [inline] if eq else []
            while not eq and index + 1 < len(args) and not args[index + 1].startswith("-"):
                index += 1
                values.append(args[index])
            found[_LISTS[name]] = tuple(v for v in values if v)  # the last occurrence replaces
        elif name in _SWITCHES and not eq:
            field, value = _SWITCHES[name]
            found[field] = value
        elif name in _VALUED:
            if eq:
                raw = inline
            elif index + 1 < len(args):
                index += 1
                raw = args[index]
            else:
                raise BadLaunchArgs(f"launch.args: {name} needs a value")
            field = _VALUED[name]
            found.update(_convert(name, field, raw))
        index += 1
    return VllmFlags(**found)


def _convert(flag: str, field: str, raw: str) -> dict[str, object]:
    try:
        if field == "max_model_len":
            if raw.strip().lower() in ("auto", "-1"):
                return {"max_model_len": None, "max_model_len_auto": True}
            return {"max_model_len": vllm_int(raw), "max_model_len_auto": False}
        if field in _HUMAN_INTS:
            return {field: vllm_int(raw)}
        if field in _INTS:
            if not raw.strip().lstrip("-").isdigit():
                raise BadLaunchArgs(f"launch.args: {flag} {raw!r} is not valid (not a whole number)")
            return {field: int(raw)}
        if field == "gpu_memory_utilization":
            return {field: float(raw)}
    except BadLaunchArgs:
        raise
    except ValueError as exc:
        raise BadLaunchArgs(f"launch.args: {flag} {raw!r} is not valid ({exc})") from None
    return {field: raw}
