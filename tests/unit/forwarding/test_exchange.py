"""An exchange over the gateway's own client (the default forwarding seam, real sockets on
loopback): the three timeouts are enforced by the request's watchdog, and each one closes the
upstream connection. The gateway is called in-process through `httpx.ASGITransport`."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson
import pytest

from vllm_gateway.gateway import create_app
from vllm_gateway.settings import Settings

BODY = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
HEAD_ONLY = b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{\"partial\":"
STREAM_HEAD = (b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"
               b"%x\r\ndata: {}\n\n\r\n" % len(b"data: {}\n\n"))


class Stalling:
    """A backend that writes `answer` and then says nothing more; counts connections it saw closed."""

    def __init__(self, answer: bytes) -> None:
        self.answer = answer
        self.closed = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(self.answer)
        await reader.read()  # until the gateway hangs up
        self.closed += 1
        writer.close()


async def call(answer: bytes, timeouts: dict[str, float], stream: bool = False) -> tuple[httpx.Response, int]:
    backend = Stalling(answer)
    listener = await asyncio.start_server(backend.handle, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{listener.sockets[0].getsockname()[1]}"
    app = create_app(Settings(backends=[{"name": "b", "url": url, "models": ["m"], "timeouts": timeouts}],
                              retries={"attempts": 1}))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gateway") as client:
        response = await client.post("/v1/chat/completions", json={**BODY, "stream": stream})
    for _ in range(200):
        if backend.closed:
            break
        await asyncio.sleep(0.01)
    listener.close()
    await app.state.registry.aclose()
    return response, backend.closed


def _error(response: httpx.Response) -> dict[str, Any]:
    return orjson.loads(response.content)["error"]


@pytest.mark.parametrize("timeouts, limit", [({"response_head": 0.2}, "timeouts.response_head"),
                                             ({"total": 0.2}, "timeouts.total")])
@pytest.mark.anyio
async def test_no_head_in_time_is_504_naming_the_limit_and_closes_upstream(timeouts: dict, limit: str) -> None:
    response, closed = await call(b"", timeouts)
    assert response.status_code == 504 and limit in _error(response)["message"]
    assert closed == 1


@pytest.mark.anyio
async def test_a_body_that_stops_coming_is_504_and_closes_upstream() -> None:
    response, closed = await call(HEAD_ONLY, {"stream_idle": 0.2})
    assert response.status_code == 504 and "stopped sending" in _error(response)["message"]
    assert closed == 1


@pytest.mark.parametrize("timeouts, limit", [({"stream_idle": 0.2}, "timeouts.stream_idle"),
                                             ({"total": 0.3}, "timeouts.total")])
@pytest.mark.anyio
async def test_a_stream_that_goes_quiet_ends_with_an_error_event_and_closes_upstream(timeouts: dict, limit: str) -> None:
    response, closed = await call(STREAM_HEAD, timeouts, stream=True)
    events = response.content.split(b"\n\n")
    assert response.status_code == 200 and events[0] == b"data: {}"
    error = orjson.loads(events[1][len(b"data: "):])["error"]
    assert error["code"] == "upstream_timeout" and limit in error["message"]
    assert events[2] == b"data: [DONE]"
    assert closed == 1
