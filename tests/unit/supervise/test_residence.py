"""Parking: a supervised process ended on purpose and started again for the residency manager, with
real processes (simulated vLLM servers), and the sleep-mode launch flags and start-failure hint."""

from __future__ import annotations

import asyncio
import io
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from vllm_gateway.metrics import GatewayMetrics
from vllm_gateway.routing.backend import Backend
from vllm_gateway.routing.discovery import ModelDiscovery
from vllm_gateway.routing.registry import Registry
from vllm_gateway.routing.state import ASLEEP, FAILED, PARKED, READY
from vllm_gateway.settings import Settings
from vllm_gateway.supervise import process as launch
from vllm_gateway.supervise.supervisor import Supervisor
from vllm_gateway.supervise.turn import LoadingTurn

PY = sys.executable
ROOT = str(Path(__file__).resolve().parents[3])


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def on_demand(swap: str = "restart", command: list[str] | None = None, **fields: Any) -> dict[str, Any]:
    command = command or [PY, "-m", "vllm_gateway", "simulate", "--model", "{model}"]
    return {"name": "b", "url": f"http://127.0.0.1:{free_port()}",
            "launch": {"model": "m", "command": command, "env": {"PYTHONPATH": ROOT}, "gpu_memory_utilization": 0.5,
                       "residency": "on_demand", "swap": swap, "restart_backoff_initial": 0.05, "stop_timeout": 5,
                       **fields}}


class Residence:
    """A stand-in residency manager: admits at once, counts, and says whether to restart."""

    def __init__(self, keep: bool = False) -> None:
        self.keep = keep
        self.admitted = self.loaded_count = 0
        self.asked = 0

    async def admit(self, backend: Backend) -> None:
        self.admitted += 1

    def loaded(self, backend: Backend) -> None:
        self.loaded_count += 1

    def keep_running(self, backend: Backend) -> bool:
        self.asked += 1
        return self.keep


async def until(predicate: Any, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        await asyncio.sleep(0.02)


def supervisor(backend: dict[str, Any], residence: Residence) -> tuple[Supervisor, Registry]:
    registry = Registry(Settings(backends=[backend]))
    return Supervisor(registry, ModelDiscovery(registry), GatewayMetrics(), probe_interval=0.05, sink=io.StringIO(),
                      residence=residence), registry


def test_a_restart_mode_unit_starts_parked_and_is_started_and_ended_on_request() -> None:
    async def scenario() -> None:
        residence = Residence()
        sup, registry = supervisor(on_demand(), residence)
        unit, b = sup.units[0], registry.backends["b"]
        sup.start()
        try:
            await until(lambda: unit.parking.is_parked)
            assert b.lifecycle.state == PARKED and b.pid is None and residence.admitted == 0
            assert await asyncio.wait_for(unit.unpark(), 20) is None
            assert b.lifecycle.state == READY and residence.admitted == 1 and residence.loaded_count == 1
            pid = b.pid
            assert pid is not None and launch.group_alive(pid)
            await asyncio.wait_for(unit.park(), 20)
            assert b.lifecycle.state == PARKED and not launch.group_alive(pid)
            assert b.restarts == 0 and residence.asked == 0  # parked on purpose: no failure, no question
            assert await asyncio.wait_for(unit.unpark(), 20) is None  # and again
            assert b.lifecycle.state == READY and b.pid != pid
        finally:
            await sup.stop()
            await registry.aclose()

    asyncio.run(scenario())


def test_a_process_that_ends_while_its_backend_is_not_awake_is_parked_not_restarted() -> None:
    async def scenario() -> None:
        residence = Residence(keep=False)
        sup, registry = supervisor(on_demand(swap="sleep"), residence)
        unit, b = sup.units[0], registry.backends["b"]
        b.residency.asleep(cold=False)  # as the manager would have it after a sleep
        sup.start()
        try:
            await until(lambda: b.lifecycle.state == READY)
            launch.signal_group(b.pid, 9)
            await until(lambda: unit.parking.is_parked)
            await asyncio.sleep(0.3)  # several backoffs' worth: nothing restarts it
            assert b.lifecycle.state == PARKED and b.pid is None and b.restarts == 0 and residence.asked == 1
            assert b.state == ASLEEP
        finally:
            await sup.stop()
            await registry.aclose()

    asyncio.run(scenario())


def test_a_failed_start_reports_to_the_unparker_and_a_park_cuts_the_backoff_short() -> None:
    code = "import sys; print('no such model'); sys.exit(3)"

    async def scenario() -> None:
        residence = Residence(keep=True)
        sup, registry = supervisor(on_demand(command=[PY, "-c", code], restart_backoff_initial=30), residence)
        unit, b = sup.units[0], registry.backends["b"]
        sup.start()
        try:
            await until(lambda: unit.parking.is_parked)
            error = await asyncio.wait_for(unit.unpark(), 20)
            assert error is not None and "exit code 3 while loading" in error and "no such model" in error
            await until(lambda: b.lifecycle.state == FAILED)
            began = time.monotonic()
            await asyncio.wait_for(unit.park(), 5)  # the 30 s backoff does not hold it up
            assert time.monotonic() - began < 5 and b.lifecycle.state == PARKED
        finally:
            await sup.stop()
            await registry.aclose()

    asyncio.run(scenario())


def test_a_build_without_sleep_mode_fails_for_good_with_what_to_change() -> None:
    # vLLM's CPU build raises this from its ModelConfig when given --enable-sleep-mode.
    code = "import sys; print('ValueError: Sleep mode is not supported on current platform.'); sys.exit(1)"

    async def scenario() -> None:
        residence = Residence(keep=True)
        sup, registry = supervisor(on_demand(swap="sleep", command=[PY, "-c", code]), residence)
        b = registry.backends["b"]
        sup.start()
        try:
            await until(lambda: b.given_up)
            assert b.state == FAILED and b.restarts == 0
            assert b.last_error.startswith("this vLLM build has no sleep mode")
            assert "use launch.swap: restart" in b.last_error
        finally:
            await sup.stop()
            await registry.aclose()

    asyncio.run(scenario())


def test_sleep_mode_adds_its_flag_and_the_dev_routes_and_restart_mode_neither() -> None:
    sleeping = Settings(backends=[on_demand(swap="sleep")]).backends[0]
    assert launch.command_line(sleeping)[-1] == "--enable-sleep-mode"
    assert launch.environment(sleeping, base={})["VLLM_SERVER_DEV_MODE"] == "1"
    restarting = Settings(backends=[on_demand(swap="restart")]).backends[0]
    assert "--enable-sleep-mode" not in launch.command_line(restarting)
    assert "VLLM_SERVER_DEV_MODE" not in launch.environment(restarting, base={})
    user = Settings(backends=[on_demand(swap="sleep", args=["--max-num-seqs", "8"])]).backends[0]
    assert launch.command_line(user)[-3:] == ["--enable-sleep-mode", "--max-num-seqs", "8"]  # args stay last
    assert launch.start_hint(restarting, "Sleep mode is not supported on current platform") is None


@pytest.mark.anyio
async def test_the_loading_turn_is_one_at_a_time_and_names_its_holder() -> None:
    turn = LoadingTurn()
    order: list[str] = []

    async def take(who: str) -> None:
        async with turn.taken_by(who):
            assert turn.holder == who
            order.append(who)
            await asyncio.sleep(0.01)

    await asyncio.gather(take("start a"), take("sleep b"), take("wake c"))
    assert order == ["start a", "sleep b", "wake c"] and turn.holder is None and not turn.locked()
