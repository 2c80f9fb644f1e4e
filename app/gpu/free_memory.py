"""Before launching a backend: is there room on its GPUs, and if not, who holds the memory.

vLLM's own refusal here ("Free memory on device ... is less than desired GPU memory
utilization") names neither the other process nor what to do; this check does, using the same
rule (v1/worker/gpu_worker.py: free at start-up >= ceil(total x gpu_memory_utilization)).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from .ownership import process_name
from .telemetry import GpuSnapshot

GIB = 2**30


def check_free_memory(snapshot: GpuSnapshot, backend: str, devices: Sequence[str], share: float,
                      name_of: Callable[[int], str] = process_name) -> str | None:
    """None when every device of `backend` has `share` of its total free, else one message saying
    how much is missing on which GPU, and which of our backends and which foreign pids hold it."""
    problems = []
    for label in devices:
        device = snapshot.device(label)
        if device is None:
            problems.append(f"GPU {label} is not among the GPUs NVML sees "
                            f"({', '.join(str(d.index) for d in snapshot.devices) or 'none'})")
            continue
        wanted = math.ceil(device.total_bytes * share)
        if device.free_bytes >= wanted:
            continue
        holders = [f"backend {name} {held / GIB:.2f} GiB" for name, held in sorted(device.by_backend.items())
                   if held and name != backend]
        holders += [f"pid {pid} ({name_of(pid)}) {held / GIB:.2f} GiB, not ours" for pid, held in device.foreign]
        problems.append(
            f"GPU {device.index} has {device.free_bytes / GIB:.2f} GiB free of {device.total_bytes / GIB:.2f} GiB, "
            f"{(wanted - device.free_bytes) / GIB:.2f} GiB short of the {wanted / GIB:.2f} GiB "
            f"(gpu_memory_utilization {share:g}) vLLM requires at start"
            + (f"; held by {', '.join(holders)}" if holders else ""))
    if not problems:
        return None
    return (f"backend {backend} cannot start: " + "; ".join(problems)
            + ". Stop what holds the memory, or lower this backend's share")
