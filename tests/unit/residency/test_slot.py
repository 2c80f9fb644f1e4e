"""A slot's bookkeeping alone: waiters in arrival order, in-flight places taken as they are let through."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from vllm_gateway.errors import ServiceUnavailable
from vllm_gateway.residency.client import SleepClient
from vllm_gateway.residency.slot import Slot
from vllm_gateway.routing.registry import Registry
from vllm_gateway.settings import Settings


def slot() -> Slot:
    settings = Settings(backends=[{"name": "b", "url": "http://127.0.0.1:9", "launch": {
        "model": "m", "gpu_memory_utilization": 0.5, "residency": "on_demand"}}])
    backend = Registry(settings).backends["b"]
    assert backend.residency is not None and backend.config.launch is not None
    return Slot(backend, backend.residency, backend.config.launch, SleepClient(httpx.AsyncClient(), 1.0))


@pytest.mark.anyio
async def test_waiters_go_in_arrival_order_each_with_its_in_flight_place() -> None:
    s = slot()
    first, operator, second = s.wait_for_wake(1.0, True), s.wait_for_wake(2.0, False), s.wait_for_wake(3.0, True)
    assert s.wanted_since == 1.0 and s.residency.waiting == 2
    assert s.forget(first) and not s.forget(first)
    assert s.wanted_since == 2.0 and s.residency.waiting == 1
    s.let_through(5.0)
    assert operator.future.done() and second.future.done() and not s.waiters
    assert s.residency.in_flight == 1 and s.residency.last_used == 5.0 and s.residency.used_since_wake  # the request only
    assert s.count_out(6.0) and s.residency.in_flight == 0


@pytest.mark.anyio
async def test_a_failure_reaches_every_waiter_and_every_operator_sleep() -> None:
    s = slot()
    waiter = s.wait_for_wake(1.0, True)
    sleep = asyncio.get_running_loop().create_future()
    s.sleep_waiters.append(sleep)
    error = ServiceUnavailable("no", code="wake_failed")
    s.fail_waiters(error)
    assert waiter.future.exception() is error and sleep.exception() is error
    assert s.residency.waiting == 0 and s.sleep_waiters == [] and s.wanted_since is None
