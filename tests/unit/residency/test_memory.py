"""Host RAM from /proc/meminfo, and the GPU probe over the telemetry (fake NVML devices)."""

from __future__ import annotations

from pathlib import Path

import pytest

from vllm_gateway.gpu.fake import FakeGpu, FakeGpus
from vllm_gateway.gpu.telemetry import GpuTelemetry
from vllm_gateway.residency.memory import host_available, host_total, level_one_fits, telemetry_probe

MEMINFO = "MemTotal:       24576000 kB\nMemFree:         1000000 kB\nMemAvailable:   16000000 kB\n"


def test_host_memory_comes_from_meminfo_in_bytes(tmp_path: Path) -> None:
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert host_available(meminfo) == 16000000 * 1024 and host_total(meminfo) == 24576000 * 1024
    assert host_available(tmp_path / "missing") is None
    assert host_available(Path("/proc/meminfo")) is not None  # this machine's, read for real


def test_a_level_one_sleep_needs_about_the_weights_free() -> None:
    assert level_one_fits(10 * 2**30, 12 * 2**30)
    assert not level_one_fits(10 * 2**30, 10 * 2**30)  # the pinned copy needs a little more


@pytest.mark.anyio
async def test_the_probe_reports_where_a_backend_holds_the_most() -> None:
    gpus = FakeGpus([FakeGpu(0, 80 * 2**30, procs=[(101, 3 * 2**30)]), FakeGpu(1, 40 * 2**30, procs=[(102, 5 * 2**30)])])
    telemetry = GpuTelemetry(gpus, lambda: {"chat": 100}, pgid_of={101: 100, 102: 100}.get)
    probe = telemetry_probe(telemetry)
    assert probe is not None
    assert await probe("chat") == (5 * 2**30, 40 * 2**30)
    assert telemetry_probe(GpuTelemetry(None, dict)) is None  # no GPU: no probe, no check
