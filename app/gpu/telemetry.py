"""Snapshots of the GPUs, and the Prometheus collector that shows the latest one on /metrics.

`GpuTelemetry.snapshot()` is synchronous: NVML queries plus /proc reads. Call it from a periodic
task through `asyncio.to_thread` (one snapshot of the fake takes microseconds, NVML's driver
queries a few milliseconds on a real machine; neither belongs on the event loop). The collector
never calls NVML itself: a scrape reads the last snapshot, so /metrics stays fast.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector, CollectorRegistry

from .devices import Gpus
from .ownership import process_group, split_by_owner


@dataclass(frozen=True)
class DeviceReading:
    index: int
    uuid: str
    name: str
    total_bytes: int
    used_bytes: int
    utilization: float | None
    by_backend: dict[str, int]  # backend name -> bytes its processes hold on this device
    foreign: tuple[tuple[int, int], ...]  # (pid, bytes) of processes no backend owns

    @property
    def free_bytes(self) -> int:
        return max(0, self.total_bytes - self.used_bytes)

    def matches(self, label: str) -> bool:
        """A CUDA_VISIBLE_DEVICES entry: an index (as NVML numbers them) or a UUID."""
        return label == str(self.index) or label == self.uuid or (label.startswith("GPU-") and self.uuid.startswith(label))


@dataclass(frozen=True)
class GpuSnapshot:
    devices: tuple[DeviceReading, ...]
    taken_at: float
    took_s: float
    errors: tuple[str, ...] = field(default=())

    def device(self, label: str) -> DeviceReading | None:
        return next((d for d in self.devices if d.matches(label)), None)

    def backend_memory(self, name: str) -> dict[str, int]:
        """{gpu index: bytes} a backend holds, for /status."""
        return {str(d.index): d.by_backend[name] for d in self.devices if d.by_backend.get(name)}


class GpuTelemetry:
    """The GPUs (None: there are none) and the launched backends' process groups, read on demand."""

    def __init__(self, gpus: Gpus | None, pgids: Callable[[], Mapping[str, int]],
                 pgid_of: Callable[[int], int | None] = process_group,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.gpus = gpus
        self._pgids = pgids
        self._pgid_of = pgid_of
        self._clock = clock
        self.latest: GpuSnapshot | None = None

    @property
    def available(self) -> bool:
        return self.gpus is not None and bool(self.gpus.devices())

    def snapshot(self) -> GpuSnapshot:
        """Read every device now (blocking) and keep the result as `latest`."""
        start = self._clock()
        pgids = dict(self._pgids())
        readings, errors = [], []
        for device in self.gpus.devices() if self.gpus is not None else []:
            try:
                total, used = device.memory()
                busy = device.utilization()
                ours, foreign = split_by_owner(device.processes(), pgids, self._pgid_of)
            except Exception as exc:  # any NVML failure: one lost device must not hide the others
                errors.append(f"GPU {device.index}: {exc}")
                continue
            readings.append(DeviceReading(device.index, device.uuid, device.name, total, used, busy, ours,
                                          tuple(foreign)))
        end = self._clock()
        self.latest = GpuSnapshot(tuple(readings), end, end - start, tuple(errors))
        return self.latest


class GpuCollector(Collector):
    """The four GPU families, from the latest snapshot; nothing before the first one."""

    def __init__(self, telemetry: GpuTelemetry) -> None:
        self.telemetry = telemetry

    def describe(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families(None)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield from self._families(self.telemetry.latest)

    @staticmethod
    def _families(snapshot: GpuSnapshot | None) -> Iterator[GaugeMetricFamily]:
        total = GaugeMetricFamily("gateway_gpu_memory_total_bytes", "GPU memory, total (NVML)", labels=["gpu"])
        used = GaugeMetricFamily("gateway_gpu_memory_used_bytes", "GPU memory in use by any process (NVML)",
                                 labels=["gpu"])
        busy = GaugeMetricFamily("gateway_gpu_utilization_ratio",
                                 "Fraction of the last sample period a kernel ran on the GPU (NVML)", labels=["gpu"])
        backend = GaugeMetricFamily("gateway_backend_gpu_memory_bytes",
                                    "GPU memory held by a launched backend's processes (its process group)",
                                    labels=["backend", "gpu"])
        for device in snapshot.devices if snapshot else ():
            gpu = str(device.index)
            total.add_metric([gpu], device.total_bytes)
            used.add_metric([gpu], device.used_bytes)
            if device.utilization is not None:
                busy.add_metric([gpu], device.utilization)
            for name, held in sorted(device.by_backend.items()):
                backend.add_metric([name, gpu], held)
        yield from (total, used, busy, backend)


def register_gpu_metrics(registry: CollectorRegistry, telemetry: GpuTelemetry) -> GpuCollector | None:
    """Add the GPU families to `registry` only when there is a GPU: without one /metrics is unchanged."""
    if not telemetry.available:
        return None
    collector = GpuCollector(telemetry)
    registry.register(collector)
    return collector
