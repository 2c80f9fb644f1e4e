"""The plan `serve`, `check-config` and `plan` work from: the settings, the GPUs' sizes, the files."""

from __future__ import annotations

import os

from ..gpu.nvml import nvml_totals
from ..settings import Settings
from .model_files import offline
from .plan import Plan, build_plan


def plan_gateway(settings: Settings, gpu_memory: int | None = None, *, strict: bool = False) -> Plan:
    """Each GPU's total from `gpu_memory` (`--gpu-memory`), else `gpu.memory`, else NVML; the
    hub (config.json and safetensors headers only) unless `HF_HUB_OFFLINE` says offline.
    Reads files: call it before the event loop runs (the CLI does)."""
    default = gpu_memory or settings.gpu.memory
    return build_plan(settings, device_memory={} if default else nvml_totals(), default_memory=default,
                      allow_network=not offline(os.environ), strict=strict)


__all__ = ["plan_gateway"]
