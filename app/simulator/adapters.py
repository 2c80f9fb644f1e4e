"""A LoRA adapter on disk, read and checked the way vLLM's worker does before it loads one.

An adapter is a folder with PEFT's `adapter_config.json` (vLLM reads `r`, `lora_alpha`,
`target_modules`, `rank_pattern`, `bias`, `use_dora`; `base_model_name_or_path` is kept for the
record, vLLM ignores it) and a weights file `adapter_model.safetensors` (or `.bin`, `.pt`), whose
contents the simulator never reads. `write_adapter` makes one for tests.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

WEIGHT_FILES = ("adapter_model.safetensors", "adapter_model.bin", "adapter_model.pt")
REQUIRED = ("lora_alpha", "r", "target_modules")


class AdapterNotFound(Exception):
    """No `adapter_config.json` at the path: vLLM's `LoRAAdapterNotFoundError` (404)."""


class AdapterInvalid(Exception):
    """The adapter exists but cannot be loaded: vLLM answers 500 with this message."""


@dataclass(frozen=True)
class AdapterFiles:
    path: str  # as resolved on disk
    rank: int
    base_model_name_or_path: str | None


def resolve(path: str) -> str:
    """vLLM's `get_adapter_absolute_path` without the hub: absolute as given, `~` expanded,
    a relative path made absolute when it exists (otherwise it would be a hub repo id)."""
    if os.path.isabs(path):
        return path
    if path.startswith("~"):
        return os.path.expanduser(path)
    return os.path.abspath(path) if os.path.exists(path) else path


def read_adapter(path: str, max_lora_rank: int) -> AdapterFiles:
    """Blocking file reads: call it in a thread."""
    where = resolve(path)
    try:
        with open(os.path.join(where, "adapter_config.json"), encoding="utf-8") as file:
            config = json.load(file)
    except FileNotFoundError:
        raise AdapterNotFound(path) from None
    except (OSError, ValueError) as exc:  # not a folder, unreadable, not JSON
        raise AdapterInvalid(str(exc)) from None
    if not isinstance(config, dict):
        raise AdapterInvalid(f"adapter_config.json of {path} is not a JSON object")
    missing = sorted(set(REQUIRED) - set(config))
    if missing:
        raise AdapterInvalid("Missing required configuration fields: {" + ", ".join(map(repr, missing)) + "}")
    rank = _rank(config)
    problems = []
    if config.get("use_dora"):
        problems.append("vLLM does not yet support DoRA.")
    if rank > max_lora_rank:
        problems.append(f"LoRA rank {rank} is greater than max_lora_rank {max_lora_rank}.")
    if config.get("bias", "none") != "none":
        problems.append("Adapter bias is not supported.")
    if problems:
        raise AdapterInvalid(" ".join(problems))
    if not any(os.path.isfile(os.path.join(where, name)) for name in WEIGHT_FILES):
        raise AdapterInvalid(f"{where} doesn't contain tensors")
    base = config.get("base_model_name_or_path")
    return AdapterFiles(where, int(config["r"]), base if isinstance(base, str) else None)


def _rank(config: dict[str, Any]) -> int:
    rank, pattern = config["r"], config.get("rank_pattern") or {}
    if not isinstance(rank, int) or isinstance(rank, bool) or rank <= 0:
        raise AdapterInvalid(f"LoRA rank `r` must be a positive integer, got {rank}.")
    if not isinstance(pattern, dict):
        raise AdapterInvalid(f"rank_pattern must be an object, got {pattern!r}")
    for key, value in pattern.items():
        if not isinstance(value, int) or value <= 0:
            raise AdapterInvalid(f"LoRA rank for `{key}` in `rank_pattern` must be a positive integer, got {value}.")
    return max([rank, *pattern.values()])


def write_adapter(folder: str | Path, rank: int = 8, base_model: str | None = None, **config: Any) -> Path:
    """A PEFT-shaped adapter folder the simulator (and vLLM's config checks) accept."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    fields = {"peft_type": "LORA", "r": rank, "lora_alpha": 2 * rank, "target_modules": ["q_proj", "v_proj"],
              "bias": "none", "base_model_name_or_path": base_model, **config}
    (folder / "adapter_config.json").write_text(json.dumps(fields), encoding="utf-8")
    (folder / "adapter_model.safetensors").write_bytes(b"\x02\x00\x00\x00\x00\x00\x00\x00{}")  # no tensors
    return folder
