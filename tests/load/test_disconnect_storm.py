"""A storm of clients that walk away: nothing may keep running on the backends afterwards.

200 clients (`GATEWAY_STORM_CLIENTS`) each drop their request at a random point, chosen with a
seeded generator (`GATEWAY_STORM_SEED` replays a run; the seed is printed):

- `body_cut`: the body stops half-way and the socket closes (the backend never hears of it);
- `immediate`: a whole streaming request (`hang_stream`), closed as soon as it is written, so it
  may or may not have reached the backend;
- `before_head`: a non-streaming generation that never ends by itself (`hang_head`), closed while
  the gateway waits for the response head;
- `before_first_byte`: a stream parked on the backend after its head (`hold`), closed before the
  client reads anything;
- `mid_stream`: a slow 500-token stream (25 s on the backend), closed after 1 to 20 events.
Half the clients leave with a TCP reset instead of a FIN. The `before_*` clients leave only once
the backends report every one of their generations running (so these paths are exercised for
certain, not by luck of timing), then after a random 0-200 ms.

None of these generations can finish by itself within the test, so every one that reached a
backend must end as a disconnect there: `running` and `held` back to 0, `completed` unchanged,
the gateway's in-flight gauge back to 0. Then normal streams still work.
`GATEWAY_STORM_CLIENTS` may go up to 400 (the simulators remember their last 200 requests each).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import struct
import time

import httpx

from tests.load import rawhttp
from tests.load.checks import chat, check_stream
from tests.load.processes import Service, counter_total, gauge_total, sim_stats, wait_until

CLIENTS = int(os.environ.get("GATEWAY_STORM_CLIENTS", "200"))
MODES = ("body_cut", "immediate", "before_head", "before_first_byte", "mid_stream")
MODELS = ("sim-a", "sim-b")
FAULTS = {"before_head": "hang_head", "before_first_byte": "hold", "immediate": "hang_stream", "mid_stream": "slow"}


async def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST rather than FIN, as a crashed client or a middlebox would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _drop(port: int, mode: str, model: str, rng: random.Random, go: asyncio.Event) -> tuple[str, int]:
    """One client of the storm: (mode, SSE events it read before leaving)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    events = 0
    abrupt = rng.random() < 0.5
    try:
        if mode == "body_cut":
            data = chat(model, 16, True)
            writer.write(data[: len(data) - rng.randint(1, 40)])
            await asyncio.sleep(rng.uniform(0, 0.2))
        elif mode == "immediate":
            writer.write(chat(model, 16, True, fault="hang_stream"))
        elif mode in ("before_head", "before_first_byte"):
            writer.write(chat(model, 16, mode == "before_first_byte", fault=FAULTS[mode]))
            await go.wait()
            await asyncio.sleep(rng.uniform(0, 0.2))
        else:
            writer.write(chat(model, 500, True, fault="slow"))
            wanted = rng.randint(1, 20)
            async with asyncio.timeout(30):
                await rawhttp.read_head(reader)
                while events < wanted:
                    line = await reader.readline()
                    if not line:
                        break
                    events += line.startswith(b"data:")
    finally:
        if abrupt:
            await _reset(writer)
        else:
            writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await writer.wait_closed()
    return mode, events


def _reached(sims: list[Service]) -> dict[str, int]:
    """How many requests with each `x-sim-fault` the backends have received (from their records)."""
    counts: dict[str, int] = {}
    for sim in sims:
        for record in httpx.get(f"{sim.url}/_sim/stats", timeout=10).json()["requests"]:
            fault = record["headers"].get("x-sim-fault")
            if fault:
                counts[fault] = counts.get(fault, 0) + 1
    return counts


async def _storm(port: int, sims: list[Service], seed: int) -> tuple[list[tuple[str, int]], dict[str, int]]:
    """Run the storm: (each client's (mode, events read), faults the backends had received at the `go`)."""
    rng = random.Random(seed)
    plan = [(rng.choice(MODES), MODELS[i % 2], random.Random(rng.random())) for i in range(CLIENTS)]
    expected = {FAULTS[m]: sum(1 for mode, _, _ in plan if mode == m) for m in ("before_head", "before_first_byte")}
    go = asyncio.Event()
    async with asyncio.timeout(60):
        clients = asyncio.gather(*(_drop(port, mode, model, own, go) for mode, model, own in plan))
        reached: dict[str, int] = {}
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            reached = await asyncio.to_thread(_reached, sims)
            if all(reached.get(fault, 0) >= n for fault, n in expected.items()):
                break
            await asyncio.sleep(0.1)
        go.set()  # on time-out too: the assertion on `reached` reports what went missing
        return list(await clients), reached


def _totals(sims: list[Service]) -> dict[str, int]:
    totals: dict[str, int] = {}
    for sim in sims:
        for key, value in sim_stats(sim).items():
            totals[key] = totals.get(key, 0) + value
    return totals


async def _normal_streams(port: int) -> list[str]:
    replies = await asyncio.gather(*(rawhttp.exchange_once(port, chat(MODELS[i % 2], 12, True, f"after-{i}"))
                                     for i in range(20)))
    return [check_stream(reply, 12, f"after-{i}") for i, reply in enumerate(replies)]


def test_disconnect_storm_leaves_nothing_running(load_stack, figures):
    gateway, sims = load_stack
    seed = int(os.environ.get("GATEWAY_STORM_SEED") or random.SystemRandom().randrange(1 << 32))
    before = _totals(sims)
    gateway_disconnects_before = counter_total(gateway.url, "gateway_client_disconnects")

    started = time.perf_counter()
    outcomes, reached = asyncio.run(_storm(gateway.port, sims, seed))
    dropped = time.perf_counter() - started
    stopped = wait_until(lambda: _totals(sims)["running"] == 0, timeout=15)
    settled = time.perf_counter() - started

    after = _totals(sims)
    delta = {key: after[key] - before[key] for key in ("received", "completed", "disconnects")}
    gateway_disconnects = counter_total(gateway.url, "gateway_client_disconnects") - gateway_disconnects_before
    in_flight = gauge_total(gateway.url, "gateway_requests_in_flight")
    by_mode = {mode: sum(1 for m, _ in outcomes if m == mode) for mode in MODES}
    mid_events = [n for m, n in outcomes if m == "mid_stream"]
    figures(f"seed {seed}: {CLIENTS} clients dropped in {dropped:.1f} s ({by_mode}); mid-stream drops after "
            f"{min(mid_events, default=0)}..{max(mid_events, default=0)} events; on the backends before the "
            f"before_* drops: {reached}")
    figures(f"backends: received {delta['received']}, disconnects {delta['disconnects']}, completed "
            f"{delta['completed']}, running {after['running']}, held {after['held']} ({settled:.1f} s after the "
            f"storm began); gateway: client disconnects {gateway_disconnects:.0f}, in flight {in_flight:.0f}")

    assert stopped, f"generations still running on the backends: {after} (seed {seed})"
    assert after["held"] == 0
    assert delta["completed"] == 0, f"a generation ran to its end although its client had left (seed {seed})"
    assert delta["disconnects"] == delta["received"], (delta, seed)
    assert reached.get("hang_head", 0) == by_mode["before_head"], reached
    assert reached.get("hold", 0) == by_mode["before_first_byte"], reached
    assert delta["received"] >= CLIENTS - by_mode["body_cut"] - by_mode["immediate"]
    assert all(n >= 1 for n in mid_events), "a mid-stream client got no event before leaving"
    assert gateway_disconnects >= delta["disconnects"]
    assert wait_until(lambda: gauge_total(gateway.url, "gateway_requests_in_flight") == 0, timeout=5)

    problems = asyncio.run(_normal_streams(gateway.port))
    assert not any(problems), problems
