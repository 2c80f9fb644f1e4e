"""A GPU list for tests (and demos): the same Protocol as NVML, with numbers set by hand."""

from __future__ import annotations

from dataclasses import dataclass, field

from .devices import GpuDevice


@dataclass
class FakeGpu:
    index: int
    total: int
    used: int = 0
    busy: float | None = 0.0
    procs: list[tuple[int, int | None]] = field(default_factory=list)
    name: str = "Fake GPU"
    uuid: str = ""

    def __post_init__(self) -> None:
        self.uuid = self.uuid or f"GPU-fake-{self.index}"

    def memory(self) -> tuple[int, int]:
        return self.total, self.used

    def utilization(self) -> float | None:
        return self.busy

    def processes(self) -> list[tuple[int, int | None]]:
        return list(self.procs)


@dataclass
class FakeGpus:
    gpus: list[FakeGpu]
    closed: bool = False

    def devices(self) -> list[GpuDevice]:
        return list(self.gpus)

    def close(self) -> None:
        self.closed = True
