"""What a simulator is started with: vLLM's flags and environment variables, as plain fields."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field

CHAT, EMBEDDING = "chat", "embedding"
MAX_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's `--max-lora-rank` choices


@dataclass(frozen=True)
class LoRAModule:
    """One `--lora-modules` entry: an adapter loaded at start."""

    name: str
    path: str
    base_model_name: str | None = None


@dataclass
class SimulatorConfig:
    models: list[str]
    kind: str = CHAT
    token_delay: float = 0.0
    max_model_len: int = 512
    default_max_tokens: int = 16
    embedding_dim: int = 32
    api_key: str | None = None
    root: str | None = None
    # Adapter names listed and served without any disk or LoRA settings (the demo's and older tests').
    lora_adapters: list[str] = field(default_factory=list)
    # `VLLM_SERVER_DEV_MODE=1`: the /sleep, /wake_up, /is_sleeping, /collective_rpc ... routes.
    dev_mode: bool = False
    # `--enable-sleep-mode`: without it a sleep pauses the engine but frees no memory (vLLM's cumem pool).
    enable_sleep_mode: bool = False
    sleep_delay: float = 0.0  # seconds a level 1/2 sleep takes (offloading the weights)
    wake_delay: float = 0.0  # seconds each wake-up of memory takes
    # `VLLM_ALLOW_RUNTIME_LORA_UPDATING`: the /v1/load_lora_adapter and /v1/unload_lora_adapter routes.
    runtime_lora_updating: bool = False
    enable_lora: bool = False
    max_loras: int = 1  # distinct adapters in one batch
    max_lora_rank: int = 16
    max_cpu_loras: int | None = None  # adapters kept loaded in CPU memory (default: max_loras)
    lora_modules: list[LoRAModule] = field(default_factory=list)
    lora_load_delay: float = 0.0  # seconds reading an adapter from disk takes
    # vLLM's `--distributed-executor-backend`: "uni" (one GPU) or "mp" (the CPU build, tensor parallel),
    # which only changes how worker errors are worded.
    executor_backend: str = "uni"

    def check(self) -> None:
        """vLLM's start-up checks: a server with these settings would not start."""
        if not self.models:
            raise ValueError("a simulator serves at least one model name")
        if self.max_lora_rank not in MAX_LORA_RANKS:
            raise ValueError(f"max_lora_rank must be one of {', '.join(map(str, MAX_LORA_RANKS))}")
        if self.max_loras < 1:
            raise ValueError("max_loras: Input should be greater than or equal to 1")
        if self.executor_backend not in ("uni", "mp"):
            raise ValueError("executor_backend is uni or mp")
        if self.max_cpu_loras is not None and self.max_cpu_loras < self.max_loras:
            raise ValueError(f"max_cpu_loras ({self.max_cpu_loras}) must be >= max_loras ({self.max_loras}).")

    @property
    def cpu_lora_slots(self) -> int:
        return self.max_cpu_loras if self.max_cpu_loras and self.max_cpu_loras > 0 else self.max_loras


def parse_lora_module(text: str) -> LoRAModule:
    """`name=path` or `{"name": ..., "path": ..., "base_model_name": ...}`, as vLLM's parser reads them."""
    if "=" in text and "," not in text:
        name, path = text.split("=", 1)
        return LoRAModule(name, path)
    try:
        fields = json.loads(text)
    except json.JSONDecodeError:
        raise ValueError(f"Invalid JSON format for --lora-modules: {text}") from None
    if not isinstance(fields, dict):
        raise ValueError(f"Invalid fields for --lora-modules: {text} - not a JSON object")  # noqa: TRY004 (argparse's kind)
    fields.pop("is_3d_lora_weight", None)
    try:
        return LoRAModule(**fields)
    except TypeError as exc:
        raise ValueError(f"Invalid fields for --lora-modules: {text} - {exc}") from None


def environment_flags(env: Mapping[str, str]) -> dict[str, bool]:
    """The two variables as vLLM's `envs.py` reads them (dev mode must be an integer there)."""
    raw = env.get("VLLM_SERVER_DEV_MODE", "0")
    try:
        dev_mode = bool(int(raw))
    except ValueError:
        raise ValueError(f"VLLM_SERVER_DEV_MODE must be an integer such as 1 or 0, not {raw!r}") from None
    runtime_lora = env.get("VLLM_ALLOW_RUNTIME_LORA_UPDATING", "0").strip().lower() in ("1", "true")
    return {"dev_mode": dev_mode, "runtime_lora_updating": runtime_lora}
