"""One POST to a model route, served by `http.protocol.GatewayHttpToolsProtocol` without
uvicorn's request-response cycle or the app's ASGI dispatch.

Under a burst of new streams the gateway's core is busy with each one's set-up, and every
microsecond there delays every stream behind it (bench/NOTES.md section 9). uvicorn's cycle does
work a forwarded request does not need: an `asyncio.Event` per request, the app's own dispatch.
This cycle keeps what a client can see the same: the ASGI `receive`/`send` contract, uvicorn's
default headers (`date`) and its header checks (the same expressions), a head sent with its
first body bytes (the protocol's transport holds it, as for uvicorn's cycle), `connection: close`
and keep-alive, chunked or length-framed bodies, flow control, the protocol's disconnect, shutdown
and pipelining handling (through the attributes that protocol reads: `http.uvicorn_compat`
lists them), and a plain 500 if the endpoint fails before answering.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

from .uvicorn_compat import HEADER_RE, HEADER_VALUE_RE, STATUS_LINE

_END = b"0\r\n\r\n"


def _nothing() -> None:
    return None


class _Signal:
    """What uvicorn's protocol calls `message_event`: set when body bytes arrive, the body ends or
    the client leaves. The only waiter is `receive()`, so a future in place of an Event."""

    __slots__ = ("waiter",)

    def __init__(self) -> None:
        self.waiter: asyncio.Future | None = None

    def set(self) -> None:
        waiter = self.waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)


class LeanCycle:
    __slots__ = ("scope", "transport", "flow", "loop", "default_headers", "on_response", "logger", "message_event",
                 "disconnected", "keep_alive", "body", "more_body", "body_ended", "response_started",
                 "response_complete", "chunked_encoding", "expected_content_length", "__weakref__")

    def __init__(self, scope: dict, transport: asyncio.Transport, flow: Any, loop: asyncio.AbstractEventLoop,
                 default_headers: list[tuple[bytes, bytes]], keep_alive: bool, on_response: Callable[[], None],
                 logger: logging.Logger) -> None:
        self.scope, self.transport, self.flow, self.loop = scope, transport, flow, loop
        self.default_headers, self.keep_alive, self.on_response, self.logger = default_headers, keep_alive, on_response, logger
        self.message_event = _Signal()
        self.disconnected = False
        self.body = bytearray()  # the protocol appends what arrives (`on_body`)
        self.more_body = True  # the protocol clears it at the end of the request (`on_message_complete`)
        self.body_ended = False  # receive() has returned the last part
        self.response_started = False
        self.response_complete = False
        self.chunked_encoding: bool | None = None
        self.expected_content_length = 0

    async def run_asgi(self, endpoint: Any) -> None:
        """What uvicorn's `run_asgi` does around an app, for one endpoint."""
        try:
            await endpoint(self.scope, self.receive, self.send)
        except BaseException as exc:  # uvicorn's contract: the task ends here, whatever happened
            self.logger.error("Exception in ASGI application\n", exc_info=exc)
            if not self.response_started:
                await self._send_500()
            else:
                self.transport.close()
        else:
            if not self.response_started and not self.disconnected:
                self.logger.error("ASGI callable returned without starting response.")
                await self._send_500()
            elif not self.response_complete and not self.disconnected:
                self.logger.error("ASGI callable returned without completing response.")
                self.transport.close()
        finally:
            self.on_response = _nothing

    async def _send_500(self) -> None:
        await self.send({"type": "http.response.start", "status": 500, "headers": [
            (b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"21"), (b"connection", b"close")]})
        await self.send({"type": "http.response.body", "body": b"Internal Server Error", "more_body": False})

    # -- ASGI --------------------------------------------------------------------------------
    async def receive(self) -> dict:
        if not self.body and (self.more_body or self.body_ended):
            if not self.disconnected and not self.response_complete:
                self.flow.resume_reading()
                signal = self.message_event
                waiter = signal.waiter = self.loop.create_future()
                try:
                    await waiter
                finally:
                    signal.waiter = None
        if self.disconnected or self.response_complete:
            return {"type": "http.disconnect"}
        body = bytes(self.body)
        self.body = bytearray()
        if not self.more_body:
            self.body_ended = True
        return {"type": "http.request", "body": body, "more_body": self.more_body}

    async def send(self, message: dict) -> None:
        if self.flow.write_paused and not self.disconnected:
            await self.flow.drain()
        if self.disconnected:
            return
        if not self.response_started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"Expected ASGI message 'http.response.start', but got '{message['type']}'.")
            self._start(message["status"], message.get("headers", ()))
            return
        if self.response_complete or message["type"] != "http.response.body":
            raise RuntimeError(f"Unexpected ASGI message '{message['type']}' for this response.")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self.chunked_encoding:
            data = b"%x\r\n%b\r\n" % (len(body), body) if body else b""
            if not more_body:
                data += _END
        else:
            self.expected_content_length -= len(body)
            if self.expected_content_length < 0:
                raise RuntimeError("Response content longer than Content-Length")
            data = body
        if data or not more_body:  # an empty last write still sends a held head at once
            self.transport.write(data)
        if not more_body:
            if self.expected_content_length != 0:
                raise RuntimeError("Response content shorter than Content-Length")
            self.response_complete = True
            self.message_event.set()
            if not self.keep_alive:
                self.transport.close()
            self.on_response()

    def _start(self, status: int, headers: Any) -> None:
        self.response_started = True
        parts = [STATUS_LINE[status]]
        close_sent = False
        for group in (self.default_headers, headers):
            for name, value in group:
                if HEADER_RE.search(name):
                    raise RuntimeError("Invalid HTTP header name.")
                if HEADER_VALUE_RE.search(value):
                    raise RuntimeError("Invalid HTTP header value.")
                name = name.lower()
                if name == b"content-length" and self.chunked_encoding is None:
                    self.expected_content_length = int(value)
                    self.chunked_encoding = False
                elif name == b"transfer-encoding" and value.lower() == b"chunked":
                    self.expected_content_length = 0
                    self.chunked_encoding = True
                elif name == b"connection" and b"close" in [t.strip() for t in value.lower().split(b",")]:
                    self.keep_alive = False
                    close_sent = True
                parts += (name, b": ", value, b"\r\n")
        if not self.keep_alive and not close_sent:
            parts.append(b"connection: close\r\n")
        if self.chunked_encoding is None and status not in (204, 304):
            self.chunked_encoding = True
            parts.append(b"transfer-encoding: chunked\r\n")
        parts.append(b"\r\n")
        self.transport.write(b"".join(parts))  # held by the protocol's transport until the first body bytes
