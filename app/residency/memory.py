"""Memory a sleep depends on: host RAM for level 1, and the GPU memory a sleeping process still holds.

- A level-1 sleep copies the weights into host RAM (pinned), so it needs about the weights' size
  free there; `host_available()` reads `MemAvailable` from /proc/meminfo (in memory, never blocks).
- Some vLLM releases freed only part of the memory on sleep. Where NVML is present, the manager is
  given a `MemoryProbe` (`telemetry_probe`, over `gpu.telemetry.GpuTelemetry`) and checks, after
  each sleep, that the process gave its share back (`policy.kept_memory`); if not, it is restarted.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..gpu.telemetry import GpuTelemetry

# (bytes its processes hold, that device's total) on the device where it holds the most; None: unknown.
MemoryProbe = Callable[[str], Awaitable[tuple[int, int] | None]]
HOST_HEADROOM = 1.1  # the pinned copy plus the allocator's slack


def host_available(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """Bytes the kernel says can be allocated without swapping (`MemAvailable`), None where unknown."""
    return _meminfo_bytes("MemAvailable", meminfo)


def host_total(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    return _meminfo_bytes("MemTotal", meminfo)


def _meminfo_bytes(key: str, meminfo: Path) -> int | None:
    try:
        text = meminfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        name, _, rest = line.partition(":")
        parts = rest.split()
        if name == key and parts and parts[0].isdigit():
            return int(parts[0]) * 1024  # the kernel writes kB (KiB)
    return None


def level_one_fits(weights_bytes: int, available: int) -> bool:
    return available >= weights_bytes * HOST_HEADROOM


def telemetry_probe(telemetry: GpuTelemetry) -> MemoryProbe | None:
    """A probe over the GPU telemetry (None without a GPU): one snapshot in a thread per question."""
    if not telemetry.available:
        return None

    async def probe(name: str) -> tuple[int, int] | None:
        snapshot = await asyncio.to_thread(telemetry.snapshot)
        held = [(device.by_backend.get(name, 0), device.total_bytes) for device in snapshot.devices]
        return max(held, default=None)

    return probe


__all__ = ["HOST_HEADROOM", "MemoryProbe", "host_available", "host_total", "level_one_fits", "telemetry_probe"]
