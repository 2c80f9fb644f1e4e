"""The client's connection beneath ASGI: where the gateway writes to it itself.

- `HeadHoldingTransport` holds a response head back until the first body bytes, so head and body
  leave in one write (uvicorn writes `http.response.start` at once, then each body message);
- `Downstream`, what the gateway's server protocol offers a request beyond ASGI, in
  `scope["extensions"]`.

Under `http.protocol.GatewayHttpToolsProtocol` each HTTP request's scope carries a `Downstream`
under `EXTENSION` (as Starlette looks for `http.response.pathsend`): the exchange asks it for a
`ChunkPipe` once a chunked response is under way, and to be called back when the client leaves.
Under any other server the key is absent, and the exchange relays through ASGI `send` and
watches `receive()` for `http.disconnect` instead. Why these two exist: bench/NOTES.md
sections 6 and 8 (a relayed chunk through ASGI costs a task wake-up and two system calls; a
watcher task per request costs more than a callback).
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

EXTENSION = "vllm_gateway.downstream"


class HeadHoldingTransport(asyncio.Transport):
    """The client connection's transport, holding a response head back until the first body
    bytes (or the end of this loop iteration), so head and body leave in one write system call.

    uvicorn writes a response's status line and headers as soon as the app sends
    `http.response.start`, and each body message separately: two `send()` calls for every
    non-streaming answer and for every stream whose first chunk is already there. Everything
    else is passed to the real transport unchanged."""

    __slots__ = ("raw", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.raw, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.raw.write(held + data)
        elif data[:9] == b"HTTP/1.1 ":
            self._held = bytes(data)
            self._loop.call_soon(self.flush)
        else:
            self.raw.write(data)

    def flush(self) -> None:
        held = self._held
        if held is not None:
            self._held = None
            if not self.raw.is_closing():
                self.raw.write(held)

    def close(self) -> None:
        self.flush()
        self.raw.close()

    def abort(self) -> None:
        self._held = None
        self.raw.abort()

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        """No socket object: uvicorn then reads the addresses from `sockname`/`peername`, which
        uvloop has at hand, instead of building a socket object per connection (bench/NOTES.md
        section 9, row 2)."""
        if name == "socket":
            return default
        return self.raw.get_extra_info(name, default)

    def is_closing(self) -> bool:
        return self.raw.is_closing()

    def is_reading(self) -> bool:
        return self.raw.is_reading()

    def pause_reading(self) -> None:
        self.raw.pause_reading()

    def resume_reading(self) -> None:
        self.raw.resume_reading()

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self.raw.set_protocol(protocol)

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self.raw.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self.raw.get_write_buffer_size()

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        self.raw.set_write_buffer_limits(high, low)

    def can_write_eof(self) -> bool:
        return self.raw.can_write_eof()

    def write_eof(self) -> None:
        self.flush()
        self.raw.write_eof()


class ChunkPipe:
    """Writes chunks of a chunked response that has started straight to the client's socket, in
    the framing the server uses for the rest of that response (its final `0\\r\\n\\r\\n` included).
    `push` says when to stop: the client is gone or reads slower than the backend writes (its
    write buffer is above the server's high-water mark); the caller then goes back to ASGI
    `send`, which waits for the buffer to drain."""

    __slots__ = ("_transport", "_flow")

    def __init__(self, transport: asyncio.Transport, flow: Any) -> None:
        self._transport, self._flow = transport, flow

    def push(self, data: bytes) -> bool:
        """Write `data` as one chunk (nothing when the client is gone); True to go on piping."""
        transport = self._transport
        if transport.is_closing():
            return False
        transport.write(b"%x\r\n%b\r\n" % (len(data), data))
        return not self._flow.write_paused


class Downstream:
    """One request's client connection, as the protocol lets the exchange use it.

    It holds the request's response cycle weakly: the cycle holds the scope, which holds this, and
    a reference cycle per request would leave every finished request to the cyclic collector
    (bench/NOTES.md section 9)."""

    __slots__ = ("_cycle", "_on_lost")

    def __init__(self, cycle: Any) -> None:
        self._cycle = weakref.ref(cycle)
        self._on_lost: Callable[[], None] | None = None

    def open_pipe(self) -> ChunkPipe | None:
        """A pipe into this response, if one can be had: started, chunked, the client still there
        and reading."""
        cycle = self._cycle()
        if cycle is None or cycle.chunked_encoding is not True or cycle.disconnected or cycle.response_complete:
            return None
        transport = cycle.transport
        if type(transport) is HeadHoldingTransport:
            transport.flush()  # a held head goes first
            transport = transport.raw
        if cycle.flow.write_paused or transport.is_closing():
            return None
        return ChunkPipe(transport, cycle.flow)

    def watch_lost(self, callback: Callable[[], None]) -> bool:
        """Call `callback` from the protocol's `connection_lost` if the client leaves before the
        response is complete. False when the client is gone already (receive() says so at once).
        The caller calls `forget()` when done: the callback usually holds the caller."""
        cycle = self._cycle()
        if cycle is None or cycle.disconnected:
            return False
        self._on_lost = callback
        return True

    def forget(self) -> None:
        self._on_lost = None

    def lost(self) -> None:
        """Called by the protocol when the client left mid-response."""
        callback = self._on_lost
        if callback is not None:
            self._on_lost = None
            callback()


def offer(scope: dict[str, Any], cycle: Any) -> None:
    """Put a `Downstream` for `cycle` in the request's scope (ASGI: an extension is a dict)."""
    scope["extensions"] = {EXTENSION: {"downstream": Downstream(cycle)}}


def downstream_of(scope: dict[str, Any]) -> Downstream | None:
    extensions = scope.get("extensions")
    offered = extensions.get(EXTENSION) if extensions else None
    return offered["downstream"] if offered is not None else None


__all__ = ["EXTENSION", "ChunkPipe", "Downstream", "HeadHoldingTransport", "downstream_of", "offer"]
