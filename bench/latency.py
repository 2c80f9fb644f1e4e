"""Latency at concurrency 1: sequential POSTs on one keep-alive connection, each one timed.

wrk corrects its latency histogram for coordinated omission: at c=1 a single stall of the
measured process (on a shared 2-core machine, another process taking the core for 200 ms) adds
hundreds of synthetic samples and becomes the p99. This client records only what each request
took, so p50/p99 say what a lone client sees; the Python client's own cost is the same for direct
and gateway runs and cancels out of the difference. Prints one JSON object.

    python -m bench.latency --url http://127.0.0.1:8080 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from urllib.parse import urlsplit

from bench import shapes


class Exchange(asyncio.Protocol):
    """One connection; `ask` sends a request and resolves when the whole response is in."""

    def __init__(self) -> None:
        self.buffer = b""
        self.waiter: asyncio.Future | None = None
        self.need = -1
        self.status = 0
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if self.need < 0:
            end = self.buffer.find(b"\r\n\r\n")
            if end == -1:
                return
            head = self.buffer[:end].lower()
            self.status = int(head[9:12])
            at = head.find(b"content-length:")
            if at == -1:
                self._done(ValueError("response without content-length"))
                return
            length = int(head[at + 15 : head.find(b"\r\n", at) if head.find(b"\r\n", at) != -1 else None])
            self.need = end + 4 + length
        if len(self.buffer) >= self.need:
            self.buffer = self.buffer[self.need :]
            self.need = -1
            self._done(None)

    def connection_lost(self, exc: Exception | None) -> None:
        self._done(ConnectionError("connection closed"))

    def _done(self, error: Exception | None) -> None:
        if self.waiter is not None and not self.waiter.done():
            if error is None:
                self.waiter.set_result(self.status)
            else:
                self.waiter.set_exception(error)

    async def ask(self, request: bytes) -> int:
        self.waiter = asyncio.get_running_loop().create_future()
        self.transport.write(request)
        return await self.waiter


async def run(url: str, seconds: float, path: str) -> dict:
    parts = urlsplit(url)
    host, port = parts.hostname, parts.port
    requests = []
    for model in shapes.MODELS:
        body = shapes.request_body(model, "small")
        requests.append(f"POST {path} HTTP/1.1\r\nhost: {host}:{port}\r\ncontent-type: application/json\r\n"
                        f"content-length: {len(body)}\r\n\r\n".encode() + body)
    loop = asyncio.get_running_loop()
    _, exchange = await loop.create_connection(Exchange, host, port)
    samples: list[float] = []
    errors = 0
    clock = time.perf_counter
    end = clock() + seconds
    turn = 0
    while True:
        began = clock()
        if began >= end:
            break
        status = await exchange.ask(requests[turn])
        samples.append(clock() - began)
        turn ^= 1
        if status != 200:
            errors += 1
    exchange.transport.close()
    samples.sort()

    def at(q: float) -> float:
        return samples[min(len(samples) - 1, int(q * len(samples)))] * 1000

    return {"requests": len(samples), "errors": errors, "p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99),
            "p999_ms": at(0.999), "max_ms": samples[-1] * 1000, "mean_ms": sum(samples) / len(samples) * 1000,
            "rps": len(samples) / seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--path", default="/v1/chat/completions")
    args = parser.parse_args()
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(run(args.url, args.seconds, args.path))
    else:
        result = uvloop.run(run(args.url, args.seconds, args.path))
    print(json.dumps(result))


if __name__ == "__main__":
    main()
