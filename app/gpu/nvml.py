"""The real GPUs, through `nvidia-ml-py` (`import pynvml`). Optional: no library, no driver or no
device all mean "no GPU" (None), never an exception, so the gateway runs the same without one.

NVML calls are synchronous driver queries (microseconds to a few milliseconds each); the caller
runs a whole snapshot off the event loop (see telemetry.py).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from .devices import GpuDevice


def open_nvml() -> NvmlGpus | None:
    """The machine's GPUs, or None when NVML cannot be used here."""
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        count = pynvml.nvmlDeviceGetCount()
    except pynvml.NVMLError:
        return None
    if count == 0:
        pynvml.nvmlShutdown()
        return None
    return NvmlGpus(pynvml, count)


def nvml_totals() -> dict[str, int]:
    """Each GPU's total memory by NVML index and by UUID; empty without NVML or a GPU."""
    gpus = open_nvml()
    if gpus is None:
        return {}
    totals: dict[str, int] = {}
    try:
        for device in gpus.devices():
            totals[str(device.index)] = totals[device.uuid] = device.memory()[0]
    finally:
        gpus.close()
    return totals


class NvmlGpus:
    def __init__(self, lib: Any, count: int) -> None:
        self._lib = lib
        self._devices = [NvmlDevice.open(lib, i) for i in range(count)]

    def devices(self) -> list[GpuDevice]:
        return list(self._devices)

    def close(self) -> None:
        with contextlib.suppress(self._lib.NVMLError):
            self._lib.nvmlShutdown()


@dataclass
class NvmlDevice:
    lib: Any
    handle: Any
    index: int
    uuid: str
    name: str

    @classmethod
    def open(cls, lib: Any, index: int) -> NvmlDevice:
        handle = lib.nvmlDeviceGetHandleByIndex(index)
        return cls(lib, handle, index, _text(lib.nvmlDeviceGetUUID(handle)), _text(lib.nvmlDeviceGetName(handle)))

    def memory(self) -> tuple[int, int]:
        info = self.lib.nvmlDeviceGetMemoryInfo(self.handle)
        return int(info.total), int(info.used)

    def utilization(self) -> float | None:
        try:
            return self.lib.nvmlDeviceGetUtilizationRates(self.handle).gpu / 100.0
        except self.lib.NVMLError:  # e.g. a MIG instance, which has no utilisation counter
            return None

    def processes(self) -> list[tuple[int, int | None]]:
        out = []
        for proc in self.lib.nvmlDeviceGetComputeRunningProcesses(self.handle):
            used = proc.usedGpuMemory
            out.append((int(proc.pid), None if used is None else int(used)))
        return out


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
