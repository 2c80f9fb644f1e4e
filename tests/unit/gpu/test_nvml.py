"""The real NVML seam: no library, no driver, no device all mean "no GPU", never an exception."""

from __future__ import annotations

import builtins
import sys
from types import SimpleNamespace
from typing import Any

import pytest

from vllm_gateway.gpu.nvml import NvmlGpus, open_nvml


def test_the_installed_library_without_a_driver_is_no_gpu() -> None:
    pytest.importorskip("pynvml")
    assert open_nvml() is None  # this machine has nvidia-ml-py but no NVIDIA driver


def test_without_the_library_there_is_no_gpu(monkeypatch: pytest.MonkeyPatch) -> None:
    real_import = builtins.__import__

    def no_pynvml(name: str, *args: Any, **kwargs: Any) -> Any:
        if name == "pynvml":
            raise ImportError("No module named 'pynvml'")
        return real_import(name, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "pynvml", raising=False)
    monkeypatch.setattr(builtins, "__import__", no_pynvml)
    assert open_nvml() is None


class FakeLib:
    """pynvml's surface as the seam uses it, for what no machine here can show."""

    class NVMLError(Exception):
        pass

    def __init__(self, count: int, mig: bool = False) -> None:
        self.count, self.mig, self.shut = count, mig, False

    def nvmlInit(self) -> None: ...

    def nvmlShutdown(self) -> None:
        self.shut = True

    def nvmlDeviceGetCount(self) -> int:
        return self.count

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetUUID(self, handle: int) -> bytes:
        return f"GPU-{handle:04d}".encode()

    def nvmlDeviceGetName(self, handle: int) -> str:
        return "NVIDIA L40S"

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> SimpleNamespace:
        return SimpleNamespace(total=48_305_799_168, used=1_000_000_000, free=47_305_799_168)

    def nvmlDeviceGetUtilizationRates(self, handle: int) -> SimpleNamespace:
        if self.mig:
            raise self.NVMLError("Not Supported")
        return SimpleNamespace(gpu=37, memory=5)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[SimpleNamespace]:
        return [SimpleNamespace(pid=4242, usedGpuMemory=900_000_000), SimpleNamespace(pid=4343, usedGpuMemory=None)]


def test_devices_through_the_library(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeLib(2)
    monkeypatch.setitem(sys.modules, "pynvml", lib)
    gpus = open_nvml()
    assert isinstance(gpus, NvmlGpus)
    first = gpus.devices()[0]
    assert (first.index, first.uuid, first.name) == (0, "GPU-0000", "NVIDIA L40S")
    assert first.memory() == (48_305_799_168, 1_000_000_000)
    assert first.utilization() == 0.37
    assert first.processes() == [(4242, 900_000_000), (4343, None)]
    gpus.close()
    assert lib.shut


def test_no_devices_is_no_gpu_and_nvml_is_shut_again(monkeypatch: pytest.MonkeyPatch) -> None:
    lib = FakeLib(0)
    monkeypatch.setitem(sys.modules, "pynvml", lib)
    assert open_nvml() is None and lib.shut


def test_a_device_without_utilisation_counters_says_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "pynvml", FakeLib(1, mig=True))
    gpus = open_nvml()
    assert gpus is not None and gpus.devices()[0].utilization() is None
