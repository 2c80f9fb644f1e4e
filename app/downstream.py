"""The client's connection beneath uvicorn's ASGI layer: the two places where the gateway writes
to it itself, because going through ASGI there costs a system call or a task wake-up per write.

- `_HeadHoldingTransport` holds a response head back until the first body bytes, so head and body
  leave in one write (uvicorn writes `http.response.start` at once, then each body message).
- `ChunkPipe` writes a stream's chunks straight to the client's socket from the backend
  connection's `data_received`: no ASGI `send`, no wake-up of the request's task per chunk. A
  relayed chunk through ASGI costs ~19 µs of which only the two system calls are necessary; 512
  paced streams are ~51,000 chunks a second, half a core.

`GatewayHttpToolsProtocol` is uvicorn's httptools protocol with both: its transport holds heads,
and each request's scope carries its response cycle under `PIPE_SCOPE_KEY`, from which
`open_pipe` makes a `ChunkPipe` once a chunked response is under way. It also serves plain POSTs
to model routes with `app.lean_cycle.LeanCycle` instead of uvicorn's request cycle, and reports a
client that leaves through `on_client_lost` (no task per request watching `receive()`). Under any
other protocol (h11, tests' ASGI transports) the key is absent and the proxy relays through ASGI
as usual.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Callable
from typing import Any

try:
    import httptools
    from uvicorn.protocols.http.flow_control import FlowControl
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

    from .lean_cycle import LeanCycle
except ImportError:  # httptools missing: app.serving falls back to h11 and says so
    HttpToolsProtocol = LeanCycle = None

PIPE_SCOPE_KEY = "vllm_gateway.response_cycle"
_ON_LOST = "vllm_gateway_on_client_lost"  # set on a response cycle by `on_client_lost`


class _HeadHoldingTransport:
    """The client connection's transport, holding a response head back until the first body
    bytes (or the end of this loop iteration), so head and body leave in one write system call.

    uvicorn writes a response's status line and headers as soon as the app sends
    `http.response.start`, and each body message separately: two `send()` calls for every
    non-streaming answer and for every stream whose first chunk is already there. Everything
    else is passed through unchanged."""

    __slots__ = ("raw", "_loop", "_held")

    def __init__(self, transport: asyncio.Transport, loop: asyncio.AbstractEventLoop) -> None:
        self.raw, self._loop = transport, loop
        self._held: bytes | None = None

    def write(self, data: bytes) -> None:
        held = self._held
        if held is not None:
            self._held = None
            self.raw.write(held + data)
        elif data.startswith(b"HTTP/1.1 "):
            self._held = data
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

    def __getattr__(self, name: str) -> Any:
        return getattr(self.raw, name)


class ChunkPipe:
    """Writes chunks of a chunked response that has started straight to the client's socket, in
    the framing uvicorn uses for the rest of that response (its final `0\\r\\n\\r\\n` included).
    `push` says when to stop: the client is gone or reads slower than the backend writes (its
    write buffer is above uvicorn's high-water mark); the caller then goes back to ASGI `send`,
    which waits for the buffer to drain."""

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


def _cycle(scope: dict) -> Any:
    """The request's response cycle, if the server put one in its scope and it is still alive.
    The scope holds it weakly: the cycle holds the scope, and a reference cycle per request would
    leave every finished request's objects to the cyclic garbage collector (memory climbing by
    ~5 KB per stream between its full collections, and their pauses in the latency)."""
    ref = scope.get(PIPE_SCOPE_KEY)
    return ref() if ref is not None else None


def open_pipe(scope: dict) -> ChunkPipe | None:
    """A pipe into this request's response, if one can be had: served by
    `GatewayHttpToolsProtocol`, the response started, chunked, the client still there."""
    cycle = _cycle(scope)
    if cycle is None or cycle.chunked_encoding is not True or cycle.disconnected or cycle.response_complete:
        return None
    transport = cycle.transport
    if type(transport) is _HeadHoldingTransport:
        transport.flush()  # a held head goes first
        transport = transport.raw
    if cycle.flow.write_paused or transport.is_closing():
        return None
    return ChunkPipe(transport, cycle.flow)


def on_client_lost(scope: dict, callback: Callable[[], None]) -> bool:
    """Call `callback` from the server's `connection_lost` if the client leaves before this
    request's response is complete: no task waiting on ASGI `receive()` for it. False when this
    server cannot (then watch `receive()` for `http.disconnect`). The caller calls
    `forget_client_lost` when done: the callback usually holds the caller, which holds the cycle."""
    cycle = _cycle(scope)
    if cycle is None or cycle.disconnected:  # gone already: receive() says so at once
        return False
    setattr(cycle, _ON_LOST, callback)
    return True


def forget_client_lost(scope: dict) -> None:
    cycle = _cycle(scope)
    if cycle is not None:
        setattr(cycle, _ON_LOST, None)


def _address(info: Any) -> tuple[str, int] | None:
    if isinstance(info, tuple) and len(info) >= 2:
        return (str(info[0]), int(info[1]))
    return None


if HttpToolsProtocol is not None:
    class GatewayHttpToolsProtocol(HttpToolsProtocol):
        """uvicorn's httptools protocol over `_HeadHoldingTransport`: plain POSTs to the app's
        model routes served by a `LeanCycle`, everything else by uvicorn's own cycle, each
        request's cycle in its scope for `open_pipe` and `on_client_lost` (module level: several
        workers are spawned processes, which receive the configuration pickled)."""

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            """uvicorn's, but with the addresses from the transport's own extra info: uvicorn asks
            uvloop for a socket object first, 13 µs per connection against 3 (measured)."""
            self.connections.add(self)
            self.transport = _HeadHoldingTransport(transport, self.loop)
            self.flow = FlowControl(transport)
            self.server = _address(transport.get_extra_info("sockname"))
            self.client = _address(transport.get_extra_info("peername"))
            self.scheme = "https" if transport.get_extra_info("sslcontext") is not None else "http"
            # The app's model routes (`app.api.GatewayApp.fast_routes`), served by `LeanCycle`;
            # none with the access log on (uvicorn's cycle writes it) or a wrapped app.
            routes = getattr(self.app, "fast_routes", None)
            self._lean_routes = routes if routes and not self.access_log and self.limit_concurrency is None else None

        def _start_lean(self) -> bool:
            """A POST to a model route, HTTP/1.1, nothing unusual: served by a `LeanCycle`.
            Anything else (and a request pipelined behind one still running) is uvicorn's."""
            parser = self.parser
            cycle = self.cycle
            if (parser.get_method() != b"POST" or parser.get_http_version() != "1.1" or self.expect_100_continue
                    or parser.should_upgrade() or (cycle is not None and not cycle.response_complete)
                    or self.root_path):
                return False
            try:
                parsed = httptools.parse_url(self.url)
            except httptools.HttpParserInvalidURLError:
                return False
            raw_path = parsed.path
            if b"%" in raw_path:
                return False
            path = raw_path.decode("ascii")
            endpoint = self._lean_routes.get(path)
            if endpoint is None:
                return False
            scope = self.scope
            scope["method"] = "POST"
            scope["path"] = path
            scope["raw_path"] = raw_path
            scope["query_string"] = parsed.query or b""
            cycle = self.cycle = LeanCycle(scope, self.transport, self.flow, self.loop,
                                           self.server_state.default_headers, parser.should_keep_alive(),
                                           self.on_response_complete, self.logger)
            scope[PIPE_SCOPE_KEY] = weakref.ref(cycle)
            task = self.loop.create_task(cycle.run(endpoint))
            task.add_done_callback(self.tasks.discard)
            self.tasks.add(task)
            return True

        def on_headers_complete(self) -> None:
            if self._lean_routes and self._start_lean():
                return
            super().on_headers_complete()
            cycle = self.cycle
            if cycle is not None and cycle.scope is self.scope:  # not a protocol upgrade
                self.scope[PIPE_SCOPE_KEY] = weakref.ref(cycle)

        def connection_lost(self, exc: Exception | None) -> None:
            cycle = self.cycle
            super().connection_lost(exc)
            if cycle is not None and cycle.disconnected:
                callback = getattr(cycle, _ON_LOST, None)
                if callback is not None:
                    callback()
else:  # pragma: no cover
    GatewayHttpToolsProtocol = None
