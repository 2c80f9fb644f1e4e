"""What `adapters:` and a launch's LoRA flags mean, as plain values (no I/O, no settings import).

- where vLLM loads each adapter from (`lora_path`): a local folder made absolute against the
  gateway's working directory (vLLM would take a relative path that does not exist for a hub id),
  or `hf:org/name`, which is the bare repo id vLLM's `get_adapter_absolute_path` downloads from the
  hub as it would at start (with the backend's HF_HOME, HF_TOKEN, HF_HUB_OFFLINE);
- which adapters vLLM loads itself at start (`--lora-modules`, pinned: never unloaded);
- how many the gateway keeps loaded per address (`default_limit`: vLLM's own CPU cache size).
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field

from ..vllm_args import read_flags

HF_PREFIX = "hf:"
# Hub ids as huggingface_hub validates them: `org/name`, letters, digits, `-`, `_`, `.`.
_HUB_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,95}/[A-Za-z0-9][A-Za-z0-9_.-]{0,95}$")
# A name clients send as `model` and a metric label: no spaces, no quotes.
ADAPTER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:/@+-]{0,127}$")
RUNTIME_LORA_ENV = "VLLM_ALLOW_RUNTIME_LORA_UPDATING"


@dataclass(frozen=True, slots=True)
class AdapterSpec:
    """One configured adapter: the name clients use and what vLLM's load route is given."""

    name: str
    source: str  # as configured
    lora_path: str


def lora_path(source: str, cwd: str | None = None) -> str:
    """The `lora_path` of vLLM's `POST /v1/load_lora_adapter` for a configured source.

    Raises ValueError with what to write instead."""
    text = source.strip()
    if not text:
        raise ValueError("is empty: give a folder holding adapter_config.json, or hf:org/name")
    if text.startswith(HF_PREFIX):
        repo = text[len(HF_PREFIX):]
        if not _HUB_ID.match(repo):
            raise ValueError(f"{source!r} is not hf:<org>/<name> (a hub repo id; revisions are not supported)")
        return repo
    path = os.path.expanduser(text)
    return os.path.normpath(path if os.path.isabs(path) else os.path.join(cwd or os.getcwd(), path))


def adapter_specs(adapters: dict[str, str], cwd: str | None = None) -> dict[str, AdapterSpec]:
    return {name: AdapterSpec(name, source, lora_path(source, cwd)) for name, source in adapters.items()}


@dataclass(frozen=True)
class LoRAFlags:
    """The LoRA flags of a `vllm serve` command line, the last occurrence winning (argparse)."""

    enable_lora: bool = False
    max_loras: int | None = None
    max_cpu_loras: int | None = None
    max_lora_rank: int | None = None
    api_server_count: int | None = None
    lora_modules: dict[str, str] = field(default_factory=dict)  # name -> path, loaded by vLLM at start


def read_lora_flags(args: list[str]) -> LoRAFlags:
    """Raises ValueError naming the flag when a value is missing or not what vLLM accepts."""
    flags = read_flags(args)
    return LoRAFlags(flags.enable_lora, flags.max_loras, flags.max_cpu_loras, flags.max_lora_rank,
                     flags.api_server_count, dict(_lora_module(item) for item in flags.lora_modules))


def _lora_module(item: str) -> tuple[str, str]:
    """`name=path` or vLLM's JSON form `{"name": ..., "path": ..., "base_model_name": ...}`."""
    if "=" in item and "," not in item:
        name, path = item.split("=", 1)
        return name, path
    try:
        data = json.loads(item)
    except json.JSONDecodeError:
        raise ValueError(f"--lora-modules {item!r} is neither name=path nor JSON") from None
    if not isinstance(data, dict) or not isinstance(data.get("name"), str) or not isinstance(data.get("path"), str):
        raise ValueError(f"--lora-modules {item!r}: the JSON form needs string fields name and path")
    return data["name"], data["path"]


def default_limit(flags: LoRAFlags) -> int:
    """Adapters kept loaded per address when `max_loaded_adapters` is not set: what vLLM keeps in
    CPU memory (`--max-cpu-loras`, which defaults to `--max-loras`, which defaults to 1), so every
    adapter the gateway counts as loaded is one vLLM holds in memory rather than re-reads from disk."""
    return flags.max_cpu_loras or flags.max_loras or 1


_TRUE = ("1", "true")


def check_adapters(adapters: dict[str, str], limit: int | None, launch_args: list[str] | None,
                   launch_env: dict[str, str]) -> None:
    """A backend's `adapters` and `max_loaded_adapters` against its launch; ValueError naming the key.

    `launch_args` is None for an external backend (the gateway cannot read its flags)."""
    for name, source in adapters.items():
        if not ADAPTER_NAME.match(name):
            raise ValueError(f"adapters.{name}: an adapter name is 1-128 letters, digits or _ . : / @ + - "
                             f"(clients send it as `model`; it is a metric label)")
        try:
            lora_path(source)
        except ValueError as exc:
            raise ValueError(f"adapters.{name}: {exc}") from None
    if not adapters:
        if limit is not None:
            raise ValueError("max_loaded_adapters is set but no adapters are configured: add adapters or remove it")
        return
    if launch_args is None:
        if limit is None:
            raise ValueError("max_loaded_adapters is required for an external backend with adapters (the gateway "
                             "cannot read its flags): set it to the server's --max-cpu-loras (default --max-loras)")
        return
    try:
        flags = read_lora_flags(launch_args)
    except ValueError as exc:
        raise ValueError(f"launch.args: {exc}") from None
    if not flags.enable_lora:
        raise ValueError("adapters: vLLM serves LoRA adapters only with --enable-lora; add it to launch.args "
                         "(with --max-lora-rank at least your adapters' rank)")
    if flags.api_server_count is not None and flags.api_server_count > 1:
        raise ValueError(f"adapters: vLLM refuses runtime adapter loading with --api-server-count "
                         f"{flags.api_server_count}; drop it from launch.args or remove adapters")
    given = launch_env.get(RUNTIME_LORA_ENV)
    if given is not None and given.strip().lower() not in _TRUE:
        raise ValueError(f"launch.env.{RUNTIME_LORA_ENV}: adapters need runtime loading; remove it (the gateway "
                         f"sets it to True)")
    for name in adapters:
        if name in flags.lora_modules:
            raise ValueError(f"adapters.{name}: also loaded at start by --lora-modules in launch.args; keep it in "
                             f"one place (--lora-modules pins it, adapters loads it on first use)")
    effective = limit if limit is not None else default_limit(flags)
    if len(flags.lora_modules) >= effective:
        key = "max_loaded_adapters" if limit is not None else "--max-cpu-loras"
        raise ValueError(f"{key}: {effective} leaves no room for adapters loaded on use: {len(flags.lora_modules)} "
                         f"are pinned by --lora-modules and count against it; raise it")


__all__ = ["ADAPTER_NAME", "HF_PREFIX", "RUNTIME_LORA_ENV", "AdapterSpec", "LoRAFlags", "adapter_specs",
           "check_adapters", "default_limit", "lora_path", "read_lora_flags"]
