"""`engine.py`: the scheduler's queueing, pausing, aborting and LoRA slots, driven directly."""

from __future__ import annotations

import asyncio

import pytest

from vllm_gateway.simulator.engine import PAUSED_ALL, PAUSED_NEW, Aborted, Engine
from vllm_gateway.simulator.metrics import SimMetrics


async def hold(engine: Engine, adapter: str | None, until: asyncio.Event, log: list[str], name: str) -> None:
    async with engine.scheduled(adapter) as job:
        log.append(f"{name} started")
        while not until.is_set():
            await engine.step(job, 0.001)
    log.append(f"{name} done")


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0)


def test_new_requests_queue_while_paused_and_start_on_resume() -> None:
    async def main() -> None:
        engine, log, go = Engine(SimMetrics("m")), list[str](), asyncio.Event()
        engine.pause(PAUSED_NEW)
        task = asyncio.create_task(hold(engine, None, go, log, "r"))
        await settle()
        assert log == [] and len(engine.waiting) == 1
        engine.resume()
        await settle()
        go.set()
        await task
        assert log == ["r started", "r done"] and not engine.jobs

    asyncio.run(main())


def test_paused_all_freezes_running_requests_and_paused_new_does_not() -> None:
    async def main() -> None:
        engine = Engine(SimMetrics("m"))
        async with engine.scheduled() as job:
            engine.pause(PAUSED_NEW)
            await asyncio.wait_for(engine.step(job, 0), 1)  # goes on: a running request drains
            engine.pause(PAUSED_ALL)
            frozen = asyncio.create_task(engine.step(job, 0))
            await settle()
            assert not frozen.done()
            engine.resume()
            await asyncio.wait_for(frozen, 1)

    asyncio.run(main())


def test_abort_reaches_running_and_queued_requests_and_cuts_a_token_delay_short() -> None:
    async def main() -> None:
        engine, started = Engine(SimMetrics("m")), asyncio.Event()

        async def long_running() -> None:
            async with engine.scheduled() as job:
                started.set()
                await engine.step(job, 60)  # a minute-long token

        async def queued() -> None:
            async with engine.scheduled():
                pass

        running = asyncio.create_task(long_running())
        await started.wait()
        engine.pause(PAUSED_NEW)
        waiting = asyncio.create_task(queued())
        await settle()
        assert [job.started for job in engine.jobs] == [True, False]
        assert len(engine.abort_all()) == 2
        for task in (running, waiting):
            with pytest.raises(Aborted):
                await asyncio.wait_for(task, 1)
        assert not engine.jobs

    asyncio.run(main())


def test_at_most_max_loras_distinct_adapters_run_at_once() -> None:
    async def main() -> None:
        engine, log, go = Engine(SimMetrics("m", max_loras=2), max_loras=2), list[str](), asyncio.Event()
        tasks = [asyncio.create_task(hold(engine, a, go, log, f"{a}{i}"))
                 for i, a in enumerate(["x", "y", "z", "x", None])]
        await settle()
        assert sorted(log) == ["None4 started", "x0 started", "x3 started", "y1 started"]  # z waits for a slot
        go.set()
        await asyncio.gather(*tasks)
        assert "z2 started" in log and not engine.jobs

    asyncio.run(main())
