"""What the simulator saw and did, and the `/_sim/*` routes that let tests read and steer it.

- `GET /_sim/stats`: everything `SimulatorState` holds, as JSON, and the adapters it has loaded.
  `awake_intervals` are the spans ([start, end or null], time.time() seconds) in which the model
  held its GPU memory: from start-up, closed when a level 1/2 sleep with `enable_sleep_mode` has
  freed it, reopened when a wake-up starts mapping it back; without `enable_sleep_mode` it never
  closes, as vLLM then frees nothing. `peak_share` adds several simulators' records up.
- `POST /_sim/release`: lets go of every generation parked by `x-sim-fault: hold` and of every
  sleep, wake-up or adapter load parked by a `hang` fault.
- `POST /_sim/health {"status": N}`: what `/health` and `/ping` answer from then on.
- `POST /_sim/faults {"sleep"|"wake"|"lora_load": "fail"|"hang"|null, ...}`: the next such operation
  fails with vLLM's 500 (the state stays as it was) or hangs until `/_sim/release`; null clears.
  `GET /_sim/faults` shows the ones still pending.
"""

from __future__ import annotations

import asyncio
import collections
import time
from collections.abc import Callable, Iterable
from typing import Any

import orjson

from .wire import Handler, Receive, Scope, Send, respond

FAULT_OPERATIONS = ("sleep", "wake", "lora_load")
FAULT_KINDS = ("fail", "hang")


class SimulatorState:
    """What the simulator saw: tests read it in-process or through `GET /_sim/stats`."""

    def __init__(self) -> None:
        self.requests: collections.deque[dict[str, Any]] = collections.deque(maxlen=200)
        self.received = 0
        self.running = 0
        self.completed = 0
        self.disconnects = 0
        self.peak_running = 0
        self.held = 0
        self.health_status = 200  # what GET /health answers; set by POST /_sim/health
        self.paths: collections.Counter[str] = collections.Counter()  # every path asked for, 404s included
        self.release = asyncio.Event()  # the generations parked by `x-sim-fault: hold` wait on it
        self.realtime: collections.deque[dict[str, Any]] = collections.deque(maxlen=50)  # `/v1/realtime` sessions
        self.faults: dict[str, str] = {}  # operation -> "fail" | "hang", for the next one only
        # When the model held its GPU memory: [start, end | None] in time.time() seconds.
        self.awake_intervals: list[list[float | None]] = [[time.time(), None]]
        self.sleeps = 0  # completed sleeps
        self.wakes = 0  # wake-ups that left it fully awake
        self.lora_loads: list[dict[str, Any]] = []  # every load attempt: name, path, status
        self.lora_unloads: list[dict[str, Any]] = []

    def saw(self, path: str) -> None:
        if path in self.paths or len(self.paths) < 1000:  # bounded: a fuzzer must not grow it forever
            self.paths[path] += 1

    def start(self) -> None:
        self.running += 1
        self.peak_running = max(self.peak_running, self.running)

    async def hold(self, limit: float = 120.0) -> None:
        """Park until `POST /_sim/release` (or `limit` seconds, so a lost release cannot hang a test)."""
        release = self.release
        self.held += 1
        try:
            async with asyncio.timeout(limit):
                await release.wait()
        except TimeoutError:
            pass
        finally:
            self.held -= 1

    def release_held(self) -> None:
        self.release.set()
        self.release = asyncio.Event()

    def take_fault(self, operation: str) -> str | None:
        return self.faults.pop(operation, None)

    def memory_taken(self) -> None:
        if self.awake_intervals[-1][1] is not None:
            self.awake_intervals.append([time.time(), None])

    def memory_freed(self) -> None:
        if self.awake_intervals[-1][1] is None:
            self.awake_intervals[-1][1] = time.time()

    def stats(self) -> dict[str, Any]:
        return {"received": self.received, "running": self.running, "completed": self.completed,
                "disconnects": self.disconnects, "peak_running": self.peak_running, "held": self.held,
                "paths": dict(self.paths), "requests": list(self.requests), "realtime": list(self.realtime),
                "awake_intervals": [list(i) for i in self.awake_intervals], "sleeps": self.sleeps,
                "wakes": self.wakes, "lora_loads": list(self.lora_loads), "lora_unloads": list(self.lora_unloads)}


def peak_share(records: Iterable[tuple[float, list[list[float | None]]]], now: float | None = None) -> float:
    """The most GPU memory held at once by several simulators, from their `awake_intervals`: each
    record is (its memory share, its intervals); an open interval counts until `now`."""
    edges: list[tuple[float, float]] = []
    end_of_record = time.time() if now is None else now
    for share, intervals in records:
        for start, end in intervals:
            if start is not None:
                edges += [(start, share), (end if end is not None else end_of_record, -share)]
    held = peak = 0.0
    for _, change in sorted(edges, key=lambda edge: (edge[0], edge[1])):  # a release before a take at one instant
        held += change
        peak = max(peak, held)
    return peak


class Controls:
    """The `/_sim/*` routes."""

    def __init__(self, state: SimulatorState, extras: Callable[[], dict[str, Any]] | None = None) -> None:
        self.state = state
        self.extras = extras  # more of the simulator's record for /_sim/stats (its adapters)

    def routes(self) -> dict[str, Handler]:
        return {"/_sim/stats": self.stats, "/_sim/release": self.release,
                "/_sim/health": self.health, "/_sim/faults": self.faults}

    async def stats(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        stats = self.state.stats()
        if self.extras is not None:
            stats.update(self.extras())
        await respond(send, 200, orjson.dumps(stats))

    async def release(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        held = self.state.held
        self.state.release_held()
        await respond(send, 200, orjson.dumps({"released": held}))

    async def health(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        try:
            status = orjson.loads(body)["status"] if scope["method"] == "POST" else None
        except (orjson.JSONDecodeError, KeyError, TypeError):
            status = None
        if type(status) is not int or not 200 <= status <= 599:
            await respond(send, 400, orjson.dumps({"error": 'POST {"status": N} with N from 200 to 599'}))
            return
        self.state.health_status = status
        await respond(send, 200, orjson.dumps({"status": status}))

    async def faults(self, scope: Scope, receive: Receive, send: Send, body: bytes) -> None:
        if scope["method"] == "POST":
            try:
                wanted = orjson.loads(body)
            except orjson.JSONDecodeError:
                wanted = None
            valid = isinstance(wanted, dict) and wanted and all(
                key in FAULT_OPERATIONS and (value is None or value in FAULT_KINDS) for key, value in wanted.items())
            if not valid:
                usage = (f"POST a JSON object whose keys are among {', '.join(FAULT_OPERATIONS)} and whose values "
                         f"are {' or '.join(FAULT_KINDS)} (or null to clear)")
                await respond(send, 400, orjson.dumps({"error": usage}))
                return
            for key, value in wanted.items():
                if value is None:
                    self.state.faults.pop(key, None)
                else:
                    self.state.faults[key] = value
        await respond(send, 200, orjson.dumps({"faults": self.state.faults}))
