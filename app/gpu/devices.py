"""The one seam between the gateway and the GPU: a few questions NVML can answer, nothing more.

`nvml.py` answers them with the real library, `fake.py` with a list for tests. Everything else
(telemetry, metrics, the free-memory check) is written against these two Protocols.
"""

from __future__ import annotations

from typing import Protocol


class GpuDevice(Protocol):
    index: int  # NVML's (PCI bus order, as nvidia-smi prints)
    uuid: str
    name: str

    def memory(self) -> tuple[int, int]:
        """(total, used) bytes, device-wide."""

    def utilization(self) -> float | None:
        """The fraction of the last sample period a kernel ran, 0..1 (None when the device cannot say)."""

    def processes(self) -> list[tuple[int, int | None]]:
        """(pid, used bytes) of the compute processes on this device; used is None when NVML cannot say."""


class Gpus(Protocol):
    def devices(self) -> list[GpuDevice]: ...

    def close(self) -> None:
        """Let go of the library (NVML's shutdown); the gateway calls it once, when it stops."""
