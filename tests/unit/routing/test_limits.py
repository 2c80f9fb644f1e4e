import asyncio

import pytest

from vllm_gateway.errors import TooManyRequests
from vllm_gateway.routing.limits import ConcurrencyLimit


@pytest.mark.anyio
async def test_under_the_limit_no_waiting():
    async def scenario():
        limit = ConcurrencyLimit("b", 2, 5, 1.0)
        await limit.acquire()
        await limit.acquire()
        assert limit.active == 2 and limit.waiting == 0
        limit.release()
        limit.release()
        assert limit.active == 0
    await scenario()


@pytest.mark.anyio
async def test_waiters_are_served_in_arrival_order():
    async def scenario():
        limit = ConcurrencyLimit("b", 1, 10, 5.0)
        await limit.acquire()
        order = []

        async def worker(i):
            await limit.acquire()
            order.append(i)
            await asyncio.sleep(0)
            limit.release()

        tasks = [asyncio.create_task(worker(i)) for i in range(5)]
        await asyncio.sleep(0.01)
        assert limit.waiting == 5
        limit.release()
        await asyncio.gather(*tasks)
        assert order == [0, 1, 2, 3, 4]
        assert limit.active == 0 and limit.waiting == 0
    await scenario()


@pytest.mark.anyio
async def test_full_queue_is_rejected_with_retry_after():
    async def scenario():
        limit = ConcurrencyLimit("b", 1, 1, 5.0)
        await limit.acquire()
        queued = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0.01)
        with pytest.raises(TooManyRequests) as info:
            await limit.acquire()
        assert info.value.status == 429 and info.value.headers["Retry-After"] == "1"
        assert limit.rejected == 1
        limit.release()
        await queued
        limit.release()
        assert limit.active == 0
    await scenario()


@pytest.mark.anyio
async def test_queue_timeout_rejects_and_leaves_no_ghost_waiter():
    async def scenario():
        limit = ConcurrencyLimit("b", 1, 5, 0.05)
        await limit.acquire()
        with pytest.raises(TooManyRequests, match="queue_timeout"):
            await limit.acquire()
        assert limit.waiting == 0
        limit.release()
        assert limit.active == 0
    await scenario()


@pytest.mark.anyio
async def test_a_cancelled_waiter_does_not_lose_the_slot():
    async def scenario():
        limit = ConcurrencyLimit("b", 1, 5, 5.0)
        await limit.acquire()
        first = asyncio.create_task(limit.acquire())
        second = asyncio.create_task(limit.acquire())
        await asyncio.sleep(0.01)
        first.cancel()
        limit.release()
        await second
        assert limit.active == 1
        limit.release()
        assert limit.active == 0
    await scenario()
