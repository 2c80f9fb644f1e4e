"""Many concurrent streaming chat requests at once; per stream, time to first event and to [DONE].

Raw asyncio protocols on fresh connections (no HTTP library of ours in the measurement). All
streams start together; the clock of each starts just before it connects, so queueing at accept
counts, as a user would feel it. Prints one JSON object on stdout.

    python -m bench.streams --url http://127.0.0.1:8080 --count 512
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from urllib.parse import urlsplit

from bench import shapes

_DONE = b"data: [DONE]"


class StreamClient(asyncio.Protocol):
    def __init__(self, request: bytes, finished: asyncio.Future) -> None:
        self.request = request
        self.finished = finished
        self.started = time.perf_counter()
        self.first: float | None = None
        self.done: float | None = None
        self.status: int | None = None
        self.head = b""
        self.tail = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        transport.write(self.request)  # type: ignore[attr-defined]

    def data_received(self, data: bytes) -> None:
        if self.status is None:
            self.head += data
            end = self.head.find(b"\r\n\r\n")
            if end == -1:
                return
            self.status = int(self.head[9:12])
            data = self.head[end + 4 :]
            self.head = b""
        if self.first is None and b"data:" in data:
            self.first = time.perf_counter()
        window = self.tail + data
        if _DONE in window:
            self.done = time.perf_counter()
            self.transport.close()
            return
        self.tail = window[-len(_DONE) :]

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.finished.done():
            self.finished.set_result(None)


async def one(host: str, port: int, request: bytes, timeout: float) -> StreamClient | str:
    loop = asyncio.get_running_loop()
    finished = loop.create_future()
    protocol = StreamClient(request, finished)
    try:
        await loop.create_connection(lambda: protocol, host, port)
        await asyncio.wait_for(finished, timeout)
    except (TimeoutError, OSError) as exc:
        if protocol.transport is not None:
            protocol.transport.abort()
        return type(exc).__name__
    return protocol


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    values = sorted(values)

    def at(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))] * 1000

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99), "max_ms": values[-1] * 1000,
            "mean_ms": statistics.fmean(values) * 1000}


async def run(url: str, count: int, timeout: float, path: str) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    requests = []
    for model in shapes.MODELS:
        body = shapes.request_body(model, "small", stream=True)
        requests.append(
            f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
            f"accept: text/event-stream\r\ncontent-length: {len(body)}\r\nconnection: close\r\n\r\n".encode() + body
        )
    began = time.perf_counter()
    results = await asyncio.gather(*(one(host, port, requests[i % 2], timeout) for i in range(count)))
    wall = time.perf_counter() - began
    streams = [r for r in results if isinstance(r, StreamClient)]
    complete = [s for s in streams if s.done is not None and s.status == 200]
    errors: dict[str, int] = {}
    for r in results:
        key = r if isinstance(r, str) else (None if r.done is not None and r.status == 200 else f"status {r.status}, incomplete")
        if key:
            errors[key] = errors.get(key, 0) + 1
    return {
        "count": count,
        "completed": len(complete),
        "errors": errors,
        "wall_s": wall,
        "first_byte": _percentiles([s.first - s.started for s in complete if s.first is not None]),
        "whole": _percentiles([s.done - s.started for s in complete]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--count", type=int, default=512)
    parser.add_argument("--timeout", type=float, default=120.0, help="per stream, seconds")
    parser.add_argument("--path", default="/v1/chat/completions")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args.url, args.count, args.timeout, args.path))
    else:
        result = uvloop.run(run(args.url, args.count, args.timeout, args.path))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
