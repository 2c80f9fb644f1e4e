"""The last few hundred forwarded requests, for the page's Activity list.

`Activity.finished` runs at the end of every exchange, on the proxy's path: it stores the raw
values it is handed in a tuple in a bounded deque (no parsing, no dict); the usage figures of a
stream are read from its last bytes only when a row is shown (`rows`). Each row carries a
sequence number, so a live page asks for what is new since the last one it has.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Protocol

import orjson

from .traffic import Traffic

# The usage event of an OpenAI stream (about 200 bytes) comes right before `data: [DONE]`.
TAIL_BYTES = 2048


class FinishedExchange(Protocol):
    """What a finished `forwarding.exchange.Exchange` offers (read, never kept)."""

    started: float
    status: int
    streaming: bool
    endpoint: str
    request_id: bytes
    first_byte_at: float
    usage: Any  # the JSON answer's `usage` (None for streams: read from `tail_*`)
    tail_prev: bytes
    tail_last: bytes

    @property
    def model(self) -> str: ...

    @property
    def backend_name(self) -> str: ...


class Activity:
    """A bounded ring of finished requests, and the per-backend last minute (`traffic.Traffic`)."""

    __slots__ = ("rows_kept", "seq", "traffic", "_wall_offset")

    def __init__(self, size: int = 500, traffic: Traffic | None = None) -> None:
        self.rows_kept: collections.deque[tuple[Any, ...]] = collections.deque(maxlen=size)
        self.seq = 0
        self.traffic = traffic if traffic is not None else Traffic()
        # perf_counter -> wall clock, fixed once: rows get a wall time without a clock call each.
        self._wall_offset = time.time() - time.perf_counter()

    def finished(self, exchange: FinishedExchange, ended: float) -> None:
        """One request answered (or abandoned): O(1), on the proxy's path."""
        started = exchange.started
        first = exchange.first_byte_at
        tail = None
        if exchange.streaming and exchange.usage is None:
            last = exchange.tail_last
            tail = last[-TAIL_BYTES:] if len(last) >= TAIL_BYTES else exchange.tail_prev[-(TAIL_BYTES - len(last)):] + last
        self.seq += 1
        backend = exchange.backend_name
        status = exchange.status
        self.rows_kept.append((self.seq, ended + self._wall_offset, exchange.model, backend, exchange.endpoint, status,
                               first - started if first else None, ended - started, exchange.usage, tail,
                               exchange.request_id, exchange.streaming))
        self.traffic.add(backend, ended - started, status)

    def refused(self, model: str, backend: str, endpoint: str, status: int, request_id: bytes, started: float) -> None:
        """A request answered by the gateway itself before any exchange (unknown model, backend down)."""
        ended = time.perf_counter()
        self.seq += 1
        self.rows_kept.append((self.seq, ended + self._wall_offset, model, backend, endpoint, status, None,
                               ended - started, None, None, request_id, False))
        self.traffic.add(backend, ended - started, status)

    def rows(self, after: int = 0) -> list[dict[str, Any]]:
        """The rows with a sequence number above `after`, oldest first, as the page shows them."""
        kept = self.rows_kept
        if not kept or kept[-1][0] <= after:
            return []
        first = kept[0][0]
        start = max(0, after - first + 1)
        return [_row(kept[i]) for i in range(start, len(kept))]


def _row(raw: tuple[Any, ...]) -> dict[str, Any]:
    seq, at, model, backend, endpoint, status, ttfb, duration, usage, tail, request_id, streaming = raw
    if usage is None and tail:
        usage = usage_in_stream(tail)
    prompt = completion = None
    if isinstance(usage, dict):
        prompt = _count(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _count(usage.get("completion_tokens", usage.get("output_tokens")))
    # Generation speed: after the first token for a stream, over the whole request otherwise.
    generating = duration - ttfb if streaming and ttfb is not None else duration
    speed = round(completion / generating, 1) if completion and generating > 0 else None
    return {"seq": seq, "time": round(at, 3), "model": model, "backend": backend, "route": endpoint, "status": status,
            "prompt_tokens": prompt, "completion_tokens": completion,
            "ttfb_s": round(ttfb, 4) if ttfb is not None else None, "duration_s": round(duration, 4),
            "tokens_per_s": speed, "request_id": request_id.decode("latin-1"), "stream": streaming}


def usage_in_stream(tail: bytes) -> dict[str, Any] | None:
    """The `usage` of the last SSE event in `tail` that carries one (`stream_options.include_usage`)."""
    at = tail.rfind(b'"usage"')
    while at != -1:
        start = tail.rfind(b"data:", 0, at)
        if start == -1:
            return None
        end = tail.find(b"\n", at)
        try:
            event = orjson.loads(tail[start + 5:end if end != -1 else len(tail)])
        except orjson.JSONDecodeError:
            at = tail.rfind(b'"usage"', 0, start)
            continue
        usage = event.get("usage") if isinstance(event, dict) else None
        if usage is None and isinstance(event, dict) and isinstance(event.get("response"), dict):
            usage = event["response"].get("usage")  # the Responses API's `response.completed`
        if isinstance(usage, dict):
            return usage
        at = tail.rfind(b'"usage"', 0, start)
    return None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


__all__ = ["Activity", "FinishedExchange", "TAIL_BYTES", "usage_in_stream"]
