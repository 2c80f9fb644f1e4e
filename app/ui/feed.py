"""The live feed: one snapshot a second, shared by every open page (Server-Sent Events).

The ticker runs for the gateway's lifetime. Each second it samples the backends' states into
the timeline (whether or not anyone watches); while at least one page is open it also asks for
the backends' vLLM figures (one shared scrape, never awaited by the tick) and encodes one event
with the `/status` document and what is new in the activity and log rings, which it hands to
every subscriber as the same bytes. A page that connects gets one `hello` with the rings whole.

Why SSE and not polling: the server computes a tick once and writes it to every page, where
polling would run a request (and a snapshot) per page per second; EventSource reconnects by
itself, and the session cookie goes with it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

import orjson

from ..api.status import status_document
from .activity import Activity
from .logs import LogBook
from .timeline import Timeline
from .vllm_stats import EngineStats

log = logging.getLogger("vllm_gateway.ui")
TICK = 1.0  # seconds
TIMELINE_EVERY = 5  # ticks: the hour chart is drawn in 5-second steps
_QUEUE = 8  # events a slow page may lag behind before it is dropped (its EventSource reconnects)
_HELLO_LOG_LINES = 500


class LiveFeed:
    def __init__(self, state: Any, activity: Activity, logs: LogBook, timeline: Timeline, engine: EngineStats,
                 tick: float = TICK) -> None:
        self.state = state
        self.activity = activity
        self.logs = logs
        self.timeline = timeline
        self.engine = engine
        self.tick_seconds = tick
        self.subscribers: set[asyncio.Queue[bytes | None]] = set()
        self.ticks = 0
        self._activity_sent = 0
        self._logs_sent = 0
        self._scrape: asyncio.Task[None] | None = None
        self.closed = False  # the gateway is shutting down: no new page is kept open

    async def run(self) -> None:
        """The ticker (the app's lifespan starts and cancels it)."""
        while True:
            try:
                self.tick()
            except Exception:  # a bug here must not stop the timeline, nor the gateway
                log.exception("the operator page's tick failed")
            await asyncio.sleep(self.tick_seconds)

    def tick(self) -> None:
        now = time.time()
        watched = bool(self.subscribers)
        document = status_document(self.state, engine=watched)
        self.timeline.sample(document["backends"], now)
        self.ticks += 1
        if not watched:
            self._activity_sent, self._logs_sent = self.activity.seq, self.logs.seq
            return
        if self._scrape is None or self._scrape.done():
            self._scrape = asyncio.get_running_loop().create_task(self.read_engines(), name="ui-engine-stats")
        event: dict[str, Any] = {"status": document, "activity": self.activity.rows(self._activity_sent),
                                 "logs": self.logs.lines(self._logs_sent)}
        self._activity_sent, self._logs_sent = self.activity.seq, self.logs.seq
        if self.ticks % TIMELINE_EVERY == 0:
            event["timeline"] = self.timeline.export(now)
        self.publish(_event("tick", event))

    async def read_engines(self) -> None:
        """Refresh each backend's vLLM figures from the merged metrics (cached, shared)."""
        try:
            page = await self.state.metrics_page.backend_part()
        except Exception:  # the metrics page logs its own failures
            return
        self.engine.update(page)

    def publish(self, data: bytes) -> None:
        for queue in list(self.subscribers):
            try:
                queue.put_nowait(data)
            except asyncio.QueueFull:  # too slow: end its stream; the browser reconnects and gets a hello
                self._end(queue)

    def hello(self, role: str, signed_in: bool = False) -> bytes:
        now = time.time()
        document = status_document(self.state, engine=True)
        return b"retry: 2000\n" + _event("hello", {
            "role": role, "signed_in": signed_in, "status": document, "activity": self.activity.rows(),
            "logs": self.logs.lines(limit=_HELLO_LOG_LINES),
            "timeline": self.timeline.export(now), "config": backend_config(self.state.settings),
            "limits": {"activity": self.activity.rows_kept.maxlen, "log_lines": self.logs.size},
        })

    async def stream(self, role: str, signed_in: bool = False) -> AsyncIterator[bytes]:
        """One page's events until it leaves or the gateway shuts down."""
        queue: asyncio.Queue[bytes | None] = asyncio.Queue(_QUEUE)
        if not self.closed:
            self.subscribers.add(queue)
        try:
            yield self.hello(role, signed_in)
            if self.closed:
                return
            while True:
                data = await queue.get()
                if data is None:
                    return
                yield data
        finally:
            self.subscribers.discard(queue)

    def close(self) -> None:
        """Shutdown: end every page's stream, so none holds the server's graceful exit."""
        self.closed = True
        for queue in list(self.subscribers):
            self._end(queue)

    def _end(self, queue: asyncio.Queue[bytes | None]) -> None:
        self.subscribers.discard(queue)
        with contextlib.suppress(asyncio.QueueEmpty):
            while True:
                queue.get_nowait()
        queue.put_nowait(None)


def _event(kind: str, data: dict[str, Any]) -> bytes:
    return b"event: " + kind.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"


def backend_config(settings: Any) -> dict[str, Any]:
    """Each backend's configuration at a glance, secrets left out (keys, environment values)."""
    out = {}
    for backend in settings.backends:
        config = backend.model_dump(mode="json", exclude={"api_key"}, exclude_none=True)
        launch = config.get("launch")
        if isinstance(launch, dict) and isinstance(launch.get("env"), dict):
            launch["env"] = {name: "(set)" for name in launch["env"]}
        out[backend.name] = config
    return out


__all__ = ["LiveFeed", "TICK", "backend_config"]
