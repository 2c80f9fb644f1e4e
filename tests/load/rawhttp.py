"""A minimal HTTP/1.1 client on raw asyncio streams, for load and malformed-input tests.

httpx costs far more CPU per chunk than the gateway under test; on a two-core machine the client
would measure itself. This reader does only what the tests need: write bytes as given (so a test
can also send what no proper client would), read one response (Content-Length, chunked or until
EOF), and hand back its status, headers and body.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field

import orjson


@dataclass
class Reply:
    status: int
    headers: dict[bytes, bytes]
    body: bytes
    reason: bytes = b""
    raw_headers: list[tuple[bytes, bytes]] = field(default_factory=list)

    def header(self, name: bytes) -> bytes | None:
        return self.headers.get(name.lower())


class NoReply(Exception):
    """The server closed the connection (or the read timed out) before a response head arrived."""


def request_bytes(method: str, path: str, body: bytes = b"", headers: dict[str, str] | None = None,
                  host: str = "127.0.0.1", keep_alive: bool = True) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"host: {host}"]
    for name, value in (headers or {}).items():
        lines.append(f"{name}: {value}")
    if body or method == "POST":
        lines.append(f"content-length: {len(body)}")
    if not keep_alive:
        lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def post_json(path: str, payload: object, headers: dict[str, str] | None = None, keep_alive: bool = True) -> bytes:
    merged = {"content-type": "application/json", **(headers or {})}
    return request_bytes("POST", path, orjson.dumps(payload), merged, keep_alive=keep_alive)


async def read_head(reader: asyncio.StreamReader) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        raise NoReply(f"connection closed after {len(exc.partial)} bytes of response head") from None
    status_line, *lines = head[:-4].split(b"\r\n")
    parts = status_line.split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/"):
        raise ValueError(f"not an HTTP status line: {status_line[:100]!r}")
    headers = []
    for line in lines:
        name, _, value = line.partition(b":")
        headers.append((name.strip().lower(), value.strip()))
    return int(parts[1]), (parts[2] if len(parts) > 2 else b""), headers


async def read_body(reader: asyncio.StreamReader, headers: dict[bytes, bytes], method: str = "POST",
                    status: int = 200) -> bytes:
    if method == "HEAD" or status in (204, 304) or 100 <= status < 200:
        return b""
    if b"chunked" in headers.get(b"transfer-encoding", b"").lower():
        parts = []
        while True:
            size_line = await reader.readuntil(b"\r\n")
            size = int(size_line.split(b";", 1)[0].strip(), 16)
            if size == 0:
                await reader.readuntil(b"\r\n")  # no trailers are expected: the final CRLF
                return b"".join(parts)
            parts.append(await reader.readexactly(size))
            await reader.readexactly(2)
    length = headers.get(b"content-length")
    if length is not None:
        return await reader.readexactly(int(length))
    return await reader.read()


async def read_reply(reader: asyncio.StreamReader, method: str = "POST") -> Reply:
    status, reason, raw = await read_head(reader)
    headers = dict(raw)
    body = await read_body(reader, headers, method, status)
    return Reply(status, headers, body, reason, raw)


class Connection:
    """One keep-alive connection: send a request, read its reply, repeat."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer

    @classmethod
    async def open(cls, port: int, host: str = "127.0.0.1") -> Connection:
        reader, writer = await asyncio.open_connection(host, port, limit=1 << 20)
        return cls(reader, writer)

    async def exchange(self, data: bytes, method: str = "POST") -> Reply:
        self.writer.write(data)
        await self.writer.drain()
        return await read_reply(self.reader, method)

    async def close(self) -> None:
        self.writer.close()
        with contextlib.suppress(ConnectionError, OSError):
            await self.writer.wait_closed()


async def exchange_once(port: int, data: bytes, method: str = "POST", timeout: float = 30.0) -> Reply:
    """Open a connection, send `data`, read one reply, close."""
    conn = await Connection.open(port)
    try:
        async with asyncio.timeout(timeout):
            return await conn.exchange(data, method)
    finally:
        await conn.close()


def sse_events(body: bytes) -> list[bytes]:
    """The `data:` payloads of an SSE body, in order."""
    events = []
    for block in body.split(b"\n\n"):
        block = block.strip(b"\r\n")
        if not block:
            continue
        for line in block.split(b"\n"):
            if line.startswith(b"data:"):
                events.append(line[5:].strip())
    return events
