"""A lean paced-SSE server standing in for a streaming vLLM: plain asyncio protocols, no framework.

Every POST gets a vLLM chat-chunk stream: `--events` chunks `--interval` seconds apart (the first
at once), the last followed by a usage chunk and `data: [DONE]`. GET /health and /v1/models answer
as vLLM does. One process can listen on several ports, one model each. Pacing uses one timer
callback per stream event (`loop.call_at`), so thousands of streams cost a heap push each per
event, not a sleeping task each.

    python -m bench.sse_upstream --listen 18101:bench-model-a --listen 18102:bench-model-b
"""

from __future__ import annotations

import argparse
import asyncio
import signal

from bench import shapes

_HEAD_END = b"\r\n\r\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def _whole(status: bytes, body: bytes) -> bytes:
    return (b"HTTP/1.1 " + status + b"\r\ncontent-type: application/json\r\ncontent-length: "
            + str(len(body)).encode() + b"\r\n\r\n" + body)


class Answers:
    """Every byte string a connection for one model sends, prepared once."""

    def __init__(self, model: str, events: int, interval: float) -> None:
        self.interval = interval
        self.health = _whole(b"200 OK", b"")
        self.models = _whole(b"200 OK", shapes.model_list(model))
        self.not_found = _whole(b"404 Not Found", b'{"detail":"Not Found"}')
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\ntransfer-encoding: chunked\r\n\r\n"
        chunks = [_chunk(e) for e in shapes.sse_events(model, events)]
        chunks[0] = head + chunks[0]
        chunks[-1] += b"0\r\n\r\n"
        self.stream = chunks


class StreamServer(asyncio.Protocol):
    def __init__(self, answers: Answers) -> None:
        self.answers = answers
        self.buffer = b""
        self.transport: asyncio.Transport | None = None
        self.streaming = False
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if not self.streaming:
            self._next_request()

    def _next_request(self) -> None:
        end = self.buffer.find(_HEAD_END)
        if end == -1:
            return
        head = self.buffer[:end]
        length = 0
        lines = head.split(b"\r\n")
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            if name.strip().lower() == b"content-length":
                length = int(value)
        total = end + 4 + length
        if len(self.buffer) < total:
            return
        self.buffer = self.buffer[total:]
        method, path = lines[0].split(b" ")[:2]
        answers = self.answers
        if method == b"POST":
            self.streaming = True
            loop = asyncio.get_running_loop()
            self._send_event(loop, loop.time(), 0)
            return
        if path == b"/health":
            self.transport.write(answers.health)
        elif path.startswith(b"/v1/models"):
            self.transport.write(answers.models)
        else:
            self.transport.write(answers.not_found)
        self._next_request()

    def _send_event(self, loop: asyncio.AbstractEventLoop, start: float, index: int) -> None:
        if self.closed:
            return
        chunks = self.answers.stream
        self.transport.write(chunks[index])
        index += 1
        if index < len(chunks):
            loop.call_at(start + index * self.answers.interval, self._send_event, loop, start, index)
        else:
            self.streaming = False
            self._next_request()


async def serve(listen: list[tuple[int, str]], events: int, interval: float) -> None:
    loop = asyncio.get_running_loop()
    servers = []
    for port, model in listen:
        answers = Answers(model, events, interval)
        servers.append(await loop.create_server(lambda a=answers: StreamServer(a), "127.0.0.1", port, backlog=4096))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    for server in servers:
        server.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", action="append", required=True, help="PORT:MODEL (repeatable)")
    parser.add_argument("--events", type=int, default=64)
    parser.add_argument("--interval", type=float, default=0.010)
    args = parser.parse_args()
    listen = [(int(p), m) for p, m in (item.split(":", 1) for item in args.listen)]
    try:
        import uvloop
    except ImportError:
        asyncio.run(serve(listen, args.events, args.interval))
    else:
        uvloop.run(serve(listen, args.events, args.interval))


if __name__ == "__main__":
    main()
