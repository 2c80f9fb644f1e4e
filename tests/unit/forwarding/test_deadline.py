"""Watchdogs behind one loop timer (`app.deadline`): each request's timeouts, without a timer each."""

from __future__ import annotations

import asyncio

import pytest

from vllm_gateway.forwarding.deadline import Deadlines


async def _sleeper(seconds: float) -> str:
    try:
        await asyncio.sleep(seconds)
    except asyncio.CancelledError:
        return "cancelled"
    return "slept"


@pytest.mark.anyio
async def test_a_watchdog_cancels_its_task_at_the_deadline_and_says_so() -> None:
    async def go() -> tuple[str, bool, float]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(_sleeper(5))
        dog = Deadlines(loop).watchdog(task)
        began = loop.time()
        dog.move(began + 0.05)
        result = await task
        return result, dog.fired, loop.time() - began

    result, fired, took = await go()
    assert result == "cancelled" and fired
    assert took < 1.0


@pytest.mark.anyio
async def test_moving_the_deadline_later_postpones_the_expiry() -> None:
    async def go() -> list[bool]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(_sleeper(5))
        dog = Deadlines(loop).watchdog(task)
        seen = []
        dog.move(loop.time() + 0.05)
        for _ in range(4):  # keep moving it, as a stream does per chunk
            await asyncio.sleep(0.03)
            dog.move(loop.time() + 0.05)
            seen.append(task.done())
        result = await task
        return seen + [result == "cancelled", dog.fired]

    assert await go() == [False, False, False, False, True, True]


@pytest.mark.anyio
async def test_moving_the_deadline_earlier_rearms() -> None:
    async def go() -> tuple[str, float]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(_sleeper(5))
        dog = Deadlines(loop).watchdog(task)
        began = loop.time()
        dog.move(began + 3.0)
        dog.move(began + 0.05)
        result = await task
        return result, loop.time() - began

    result, took = await go()
    assert result == "cancelled" and took < 1.0


@pytest.mark.anyio
async def test_a_stopped_watchdog_never_fires() -> None:
    async def go() -> tuple[str, bool]:
        loop = asyncio.get_running_loop()
        task = loop.create_task(_sleeper(0.15))
        dog = Deadlines(loop).watchdog(task)
        dog.move(loop.time() + 0.05)
        dog.stop()
        return await task, dog.fired

    assert await go() == ("slept", False)


@pytest.mark.anyio
async def test_each_watchdog_expires_on_its_own_deadline() -> None:
    async def go() -> list[str]:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        tasks = [loop.create_task(_sleeper(0.3)) for _ in range(3)]
        now = loop.time()
        for task, after in zip(tasks, (0.02, 1.0, 0.04), strict=False):
            deadlines.watchdog(task).move(now + after)
        return list(await asyncio.gather(*tasks))

    assert await go() == ["cancelled", "slept", "cancelled"]


@pytest.mark.anyio
async def test_finished_requests_leave_no_growing_heap() -> None:
    """Every request pushes one entry and stops; stale entries are compacted away."""

    async def go() -> int:
        loop = asyncio.get_running_loop()
        deadlines = Deadlines(loop)
        task = loop.create_task(asyncio.sleep(5))
        for _ in range(5000):
            dog = deadlines.watchdog(task)
            dog.move(loop.time() + 600)
            dog.stop()
        task.cancel()
        return len(deadlines._heap)

    assert await go() <= 2048
