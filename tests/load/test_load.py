"""Load through ONE gateway process: nothing lost, nothing duplicated, nothing leaked.

- 2,000 concurrent streaming chat requests, provably all open at once (the simulators park each
  generation after its response head until every head has reached the client, then release them
  together): every stream is complete and is its own (exact chunk count and text, a usage chunk
  with the right token count, `[DONE]` once, request ids unique and matching); afterwards the
  gateway holds no client connection and at most one pooled upstream connection per stream,
  and once the keep-alive pool expires, no more descriptors or connections than before the load.
- A soak of short requests (`GATEWAY_SOAK_REQUESTS`, default 20,000; run 200,000 by hand):
  every answer is right and the gateway's RSS stays flat after warm-up.

Speeds are printed, never asserted. The client speaks raw HTTP/1.1 on asyncio streams
(`rawhttp.py`) so it costs little CPU next to the gateway on a two-core machine.
"""

from __future__ import annotations

import asyncio
import os
import socket
import time

import httpx
import orjson
import pytest

from tests.load import rawhttp
from tests.load.checks import chat, check_stream
from tests.load.processes import (
    Service,
    counter_total,
    established_tcp,
    gauge_total,
    open_fds,
    rss_kib,
    sim_stats,
    wait_until,
)
from vllm_gateway.http.serving import bind

STREAMS = 2000
SOAK_REQUESTS = int(os.environ.get("GATEWAY_SOAK_REQUESTS", "20000"))
SOAK_CONCURRENCY = 32
RSS_SAMPLES = 20
RSS_WARMUP_FRACTION = 0.25
RSS_GROWTH_LIMIT_KIB = 15 * 1024
KEEPALIVE_EXPIRY = 4.0  # app/registry.py: idle upstream connections are closed after this (simulators: 5 s)
MODELS = ("sim-a", "sim-b")


async def _stream_once(port: int, i: int, opened: asyncio.Queue) -> tuple[str, str]:
    """Request i of the burst: (x-request-id the gateway answered with, problem or "").

    The backend parks every generation right after its response head (`x-sim-fault: hold`); the
    head reaching this client is reported on `opened`, and the tokens flow once the test releases
    the backends, which it does only when all heads have arrived.
    """
    max_tokens = 8 + i % 17
    sent_id = None if i % 4 == 3 else f"load-{i}"  # every 4th id is left to the gateway to make
    data = chat(MODELS[i % 2], max_tokens, True, sent_id, keep_alive=False, fault="hold")
    conn = None
    try:
        async with asyncio.timeout(180):
            conn = await rawhttp.Connection.open(port)
            conn.writer.write(data)
            status, _, raw = await rawhttp.read_head(conn.reader)
            opened.put_nowait(i)
            headers = dict(raw)
            reply = rawhttp.Reply(status, headers, await rawhttp.read_body(conn.reader, headers), raw_headers=raw)
    except Exception as exc:  # noqa: BLE001 - any failure is a lost request, reported with its kind
        return "", f"{type(exc).__name__}: {exc}"
    finally:
        if conn is not None:
            await conn.close()
    return (reply.header(b"x-request-id") or b"").decode(), check_stream(reply, max_tokens, sent_id)


async def _burst(port: int, sims: list[Service]) -> tuple[list[tuple[str, str]], int, int, float]:
    """(results, heads seen before the release, generations parked on the backends then, seconds to open all)."""
    opened: asyncio.Queue = asyncio.Queue()
    started = time.perf_counter()
    tasks = [asyncio.create_task(_stream_once(port, i, opened)) for i in range(STREAMS)]
    heads = 0
    try:
        async with asyncio.timeout(90):
            while heads < STREAMS:
                await opened.get()
                heads += 1
    except TimeoutError:
        pass  # some stream never opened: reported below, after the others are released
    all_open = time.perf_counter() - started
    held = 0
    async with httpx.AsyncClient(timeout=10) as client:
        try:
            for sim in sims:
                held += (await client.get(f"{sim.url}/_sim/stats")).json()["held"]
        finally:
            for sim in sims:
                await client.post(f"{sim.url}/_sim/release")
    return list(await asyncio.gather(*tasks)), heads, held, all_open


def _settle(gateway: Service, sims: list[Service]) -> None:
    """One request per backend, so the gateway's pools drop connections that expired meanwhile."""
    for model in MODELS:
        reply = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=10,
                           json={"model": model, "messages": [{"role": "user", "content": "x"}], "max_tokens": 1})
        assert reply.status_code == 200, reply.text


def test_2000_concurrent_streams_lose_nothing_and_leak_nothing(load_stack, figures):
    gateway, sims = load_stack
    _settle(gateway, sims)
    fds_before, tcp_before, rss_before = open_fds(gateway.pid), established_tcp(gateway.pid), rss_kib(gateway.pid)
    received_before = sum(sim_stats(s)["received"] for s in sims)
    completed_before = sum(sim_stats(s)["completed"] for s in sims)

    started = time.perf_counter()
    results, heads, held, all_open = asyncio.run(_burst(gateway.port, sims))
    elapsed = time.perf_counter() - started

    problems = [(i, problem) for i, (_, problem) in enumerate(results) if problem]
    ids = [rid for rid, _ in results]
    fds_after, tcp_after, rss_after = open_fds(gateway.pid), established_tcp(gateway.pid), rss_kib(gateway.pid)
    tokens = sum(8 + i % 17 for i in range(STREAMS))
    figures(f"{STREAMS} streams all open at once after {all_open:.1f} s ({heads} heads at the client, {held} generations "
            f"parked on the backends); all {tokens} tokens delivered after {elapsed:.1f} s in total "
            f"({STREAMS / elapsed:.0f} streams/s), {len(problems)} bad")
    figures(f"gateway fds {fds_before} before, {fds_after} right after; established TCP {tcp_before} -> {tcp_after}; "
            f"RSS {rss_before / 1024:.0f} -> {rss_after / 1024:.0f} MiB")
    assert heads == STREAMS and held == STREAMS, f"only {heads} streams opened ({held} parked on the backends)"
    assert not problems, f"{len(problems)} of {STREAMS} streams were wrong, e.g. {problems[:5]}"
    assert len(set(ids)) == STREAMS, "request ids were reused"
    assert wait_until(lambda: sum(sim_stats(s)["running"] for s in sims) == 0)
    assert sum(sim_stats(s)["received"] for s in sims) - received_before == STREAMS
    assert sum(sim_stats(s)["completed"] for s in sims) - completed_before == STREAMS
    assert wait_until(lambda: gauge_total(gateway.url, "gateway_requests_in_flight") == 0)

    # Right after the burst no client connection is left (each asked for `connection: close`), and
    # the upstream keep-alive pool holds at most one idle connection per stream; nothing else.
    assert wait_until(lambda: established_tcp(gateway.pid, gateway.port) == 0, timeout=5), \
        f"{established_tcp(gateway.pid, gateway.port)} client connections still open on the gateway"
    # Counted once the client sockets are closed (the gateway may still be reading their FINs when
    # the last stream ends): what is left is the upstream pool, at most one connection per stream.
    fds_drained = open_fds(gateway.pid)
    figures(f"gateway fds once client connections closed: {fds_drained}")
    assert fds_drained <= fds_before + STREAMS
    assert established_tcp(gateway.pid) <= tcp_before + STREAMS
    # Once the pooled ones expire, the next request closes them: back to where the gateway started.
    time.sleep(KEEPALIVE_EXPIRY + 1)
    _settle(gateway, sims)
    assert wait_until(lambda: open_fds(gateway.pid) <= fds_before + 2, timeout=5), \
        f"fds {fds_before} before the burst, {open_fds(gateway.pid)} after the pools expired"
    fds_settled, tcp_settled = open_fds(gateway.pid), established_tcp(gateway.pid)
    figures(f"after keep-alive expiry: fds {fds_settled}, established TCP {tcp_settled}")
    assert tcp_settled <= tcp_before + 2


async def _soak(port: int, pid: int, total: int) -> tuple[list[tuple[int, int]], list[str], float]:
    every = max(1, total // RSS_SAMPLES)
    samples: list[tuple[int, int]] = []
    problems: list[str] = []
    issued = 0
    done = 0

    async def worker() -> None:
        nonlocal issued, done
        conn = await rawhttp.Connection.open(port)
        try:
            while issued < total:
                i = issued
                issued += 1
                stream = i % 4 == 0
                try:
                    async with asyncio.timeout(30):
                        reply = await conn.exchange(chat(MODELS[i % 2], 2, stream, None, True))
                except Exception as exc:  # noqa: BLE001 - reported, and the worker reconnects
                    problems.append(f"request {i}: {type(exc).__name__}: {exc}")
                    await conn.close()
                    conn = await rawhttp.Connection.open(port)
                    continue
                if stream:
                    problem = check_stream(reply, 2, None)
                elif reply.status != 200:
                    problem = f"status {reply.status}: {reply.body[:200]!r}"
                else:
                    problem = "" if orjson.loads(reply.body)["usage"]["completion_tokens"] == 2 else "wrong usage"
                if problem:
                    problems.append(f"request {i}: {problem}")
                done += 1
                if done % every == 0:
                    samples.append((done, rss_kib(pid)))
        finally:
            await conn.close()

    started = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(SOAK_CONCURRENCY)))
    return samples, problems, time.perf_counter() - started


@pytest.mark.timeout(max(300, SOAK_REQUESTS // 100))  # room for a long run by hand
def test_soak_rss_stays_flat(load_stack, figures):
    gateway, sims = load_stack
    counted_before = counter_total(gateway.url, "gateway_requests")
    samples, problems, elapsed = asyncio.run(_soak(gateway.port, gateway.pid, SOAK_REQUESTS))
    warm = [rss for done, rss in samples if done >= SOAK_REQUESTS * RSS_WARMUP_FRACTION]
    growth = max(warm) - warm[0]
    figures(f"soak: {SOAK_REQUESTS} short requests (1 in 4 streamed) over {SOAK_CONCURRENCY} keep-alive connections "
            f"in {elapsed:.1f} s ({SOAK_REQUESTS / elapsed:.0f} req/s), {len(problems)} bad")
    figures("soak RSS MiB by requests done: "
            + ", ".join(f"{done}:{rss / 1024:.1f}" for done, rss in samples))
    figures(f"soak RSS growth after warm-up ({RSS_WARMUP_FRACTION:.0%}): {growth / 1024:.2f} MiB "
            f"(limit {RSS_GROWTH_LIMIT_KIB / 1024:.0f} MiB)")
    assert not problems, f"{len(problems)} bad answers, e.g. {problems[:5]}"
    assert counter_total(gateway.url, "gateway_requests") - counted_before == SOAK_REQUESTS
    assert growth < RSS_GROWTH_LIMIT_KIB, f"RSS grew {growth} KiB after warm-up: {samples}"


def test_sockets_from_bind_get_tcp_nodelay_under_asyncio():
    """`vllm-gateway serve` lets uvicorn bind (uvloop sets TCP_NODELAY itself); the demo and the
    test servers pass a socket from `bind()` to uvicorn under asyncio, whose transports set
    TCP_NODELAY only when `sock.proto == IPPROTO_TCP` (asyncio.base_events._set_nodelay).
    Measured: a FastAPI response's 2-byte body arrives 42 ms after its head; 0.3 ms once fixed."""
    listener = bind("127.0.0.1", 0)
    listener.setblocking(True)
    client = socket.create_connection(listener.getsockname()[:2], timeout=5)
    accepted, _ = listener.accept()
    try:
        nodelay = accepted.proto == socket.IPPROTO_TCP or accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        assert nodelay, "accepted connections keep Nagle's algorithm on"
    finally:
        for sock in (accepted, client, listener):
            sock.close()
