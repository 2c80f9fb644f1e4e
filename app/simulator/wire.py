"""Raw ASGI plumbing shared by the routes: answers, headers, query strings, disconnects."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qsl

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]
# Every route: the scope, the ASGI channels, and the request body already read.
Handler = Callable[[Scope, Receive, Send, bytes], Awaitable[None]]

NOT_FOUND = b'{"detail":"Not Found"}'
METHOD_NOT_ALLOWED = b'{"detail":"Method Not Allowed"}'


async def respond(send: Send, status: int, body: bytes, content_type: bytes | None = b"application/json") -> None:
    """A whole answer; `content_type=None` sends none, as Starlette's plain `Response` does."""
    headers = [(b"content-length", str(len(body)).encode())]
    if content_type is not None:
        headers.insert(0, (b"content-type", content_type))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return value
    return None


def query(scope: Scope) -> list[tuple[str, str]]:
    """The query string's pairs in order, repeats kept (`?tags=a&tags=b`)."""
    raw = scope.get("query_string") or b""
    return parse_qsl(raw.decode("latin-1"), keep_blank_values=True)


async def read_body(receive: Receive) -> bytes | None:
    """The whole request body, or None when the client left before sending it."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        body += message.get("body", b"")
        if not message.get("more_body"):
            return body


async def until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass
