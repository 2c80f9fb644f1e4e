"""Snapshots and the /metrics families: present only with a GPU, the page unchanged without one."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from vllm_gateway.gpu.fake import FakeGpu, FakeGpus
from vllm_gateway.gpu.telemetry import GpuTelemetry, register_gpu_metrics

GIB = 2**30
FAMILIES = ("gateway_gpu_memory_total_bytes", "gateway_gpu_memory_used_bytes", "gateway_gpu_utilization_ratio",
            "gateway_backend_gpu_memory_bytes")


def l40s() -> FakeGpus:
    return FakeGpus([FakeGpu(0, total=45 * GIB, used=30 * GIB, busy=0.5,
                             procs=[(101, 6 * GIB), (201, 20 * GIB), (999, 3 * GIB)])])


def telemetry(gpus: FakeGpus | None) -> GpuTelemetry:
    groups = {101: 100, 201: 200}
    return GpuTelemetry(gpus, lambda: {"embed": 100, "guard": 200}, pgid_of=groups.get)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    page = generate_latest(registry).decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(page) for s in family.samples}


def gateway_registry() -> CollectorRegistry:
    registry = CollectorRegistry()
    Counter("gateway_requests_total", "requests", ["backend"], registry=registry).labels("embed").inc()
    return registry


def test_without_a_gpu_the_metrics_page_is_unchanged() -> None:
    for gpus in (None, FakeGpus([])):
        registry = gateway_registry()
        before = generate_latest(registry)
        assert register_gpu_metrics(registry, telemetry(gpus)) is None
        assert generate_latest(registry) == before
        assert b"gateway_gpu" not in before


def test_with_a_gpu_the_four_families_appear_from_the_latest_snapshot() -> None:
    registry = gateway_registry()
    tele = telemetry(l40s())
    assert register_gpu_metrics(registry, tele) is not None
    assert b"gateway_gpu_memory_total_bytes{" not in generate_latest(registry)  # no snapshot yet: no samples
    tele.snapshot()
    page = generate_latest(registry).decode()
    for family in FAMILIES:
        assert f"# TYPE {family} gauge" in page
    got = samples(registry)
    gpu = (("gpu", "0"),)
    assert got[("gateway_gpu_memory_total_bytes", gpu)] == 45 * GIB
    assert got[("gateway_gpu_memory_used_bytes", gpu)] == 30 * GIB
    assert got[("gateway_gpu_utilization_ratio", gpu)] == 0.5
    assert got[("gateway_backend_gpu_memory_bytes", (("backend", "embed"), ("gpu", "0")))] == 6 * GIB
    assert got[("gateway_backend_gpu_memory_bytes", (("backend", "guard"), ("gpu", "0")))] == 20 * GIB
    assert got[("gateway_requests_total", (("backend", "embed"),))] == 1  # the gateway's own families stay


def test_a_scrape_does_not_query_the_gpu() -> None:
    gpus = l40s()
    registry = CollectorRegistry()
    tele = telemetry(gpus)
    register_gpu_metrics(registry, tele)
    tele.snapshot()
    gpus.gpus[0].used = 44 * GIB  # changes after the snapshot are not seen until the next one
    assert samples(registry)[("gateway_gpu_memory_used_bytes", (("gpu", "0"),))] == 30 * GIB


def test_snapshot_per_backend_and_foreign_memory() -> None:
    snap = telemetry(l40s()).snapshot()
    device = snap.devices[0]
    assert device.by_backend == {"embed": 6 * GIB, "guard": 20 * GIB}
    assert device.foreign == ((999, 3 * GIB),)
    assert device.free_bytes == 15 * GIB
    assert snap.backend_memory("guard") == {"0": 20 * GIB}
    assert snap.device("0") is device and snap.device("GPU-fake-0") is device and snap.device("1") is None


def test_a_failing_device_does_not_hide_the_others() -> None:
    class Lost(FakeGpu):
        def memory(self) -> tuple[int, int]:
            raise RuntimeError("GPU is lost")

    snap = telemetry(FakeGpus([Lost(0, total=GIB), FakeGpu(1, total=2 * GIB)])).snapshot()
    assert [d.index for d in snap.devices] == [1]
    assert snap.errors == ("GPU 0: GPU is lost",)


def test_how_long_a_snapshot_takes_with_the_fake() -> None:
    """Printed, not asserted (no timed assertions): the figure behind the to_thread advice."""
    tele = telemetry(FakeGpus([FakeGpu(i, total=80 * GIB, procs=[(100 + i, GIB)]) for i in range(8)]))
    start = time.perf_counter()
    for _ in range(1000):
        tele.snapshot()
    each_ms = (time.perf_counter() - start) / 1000 * 1e3
    print(f"\n[gpu] one snapshot of 8 fake GPUs (with /proc reads faked): {each_ms:.4f} ms")
