"""Before a launch: enough free memory on the backend's GPUs, or a message naming who holds it."""

from __future__ import annotations

from vllm_gateway.gpu.fake import FakeGpu, FakeGpus
from vllm_gateway.gpu.free_memory import check_free_memory
from vllm_gateway.gpu.telemetry import GpuTelemetry

GIB = 2**30


def snapshot(used: int, procs: list[tuple[int, int]]):
    gpus = FakeGpus([FakeGpu(0, total=48 * GIB, used=used, procs=procs)])
    return GpuTelemetry(gpus, lambda: {"embed": 100, "guard": 200}, pgid_of={101: 100, 201: 200}.get).snapshot()


def test_enough_free_memory_says_nothing() -> None:
    assert check_free_memory(snapshot(8 * GIB, [(101, 7 * GIB)]), "guard", ["0"], 0.6) is None


def test_short_of_memory_names_our_backends_and_the_foreign_pid() -> None:
    snap = snapshot(30 * GIB, [(101, 7 * GIB), (999, 22 * GIB)])
    message = check_free_memory(snap, "guard", ["0"], 0.6, name_of=lambda pid: "python3")
    assert message is not None
    assert message.startswith("backend guard cannot start: GPU 0 has 18.00 GiB free of 48.00 GiB, ")
    assert "10.80 GiB short of the 28.80 GiB (gpu_memory_utilization 0.6) vLLM requires at start" in message
    assert "held by backend embed 7.00 GiB, pid 999 (python3) 22.00 GiB, not ours" in message
    assert message.endswith("Stop what holds the memory, or lower this backend's share")


def test_a_device_nvml_does_not_see_is_named() -> None:
    message = check_free_memory(snapshot(0, []), "guard", ["3"], 0.5)
    assert message is not None and "GPU 3 is not among the GPUs NVML sees (0)" in message
