"""app.auth on WebSocket scopes: a guarded path is refused before the handshake is accepted;
open paths and the right key go through. (HTTP scopes: tests/e2e/test_security.py.)"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from vllm_gateway.api.auth import ApiKeyMiddleware

KEY = "sk-unit"


def call(scope: dict[str, Any]) -> tuple[list[dict[str, Any]], bool]:
    """What the middleware sends, and whether it let the scope through to the app."""
    sent: list[dict[str, Any]] = []
    reached = False

    async def app(scope: dict, receive: Any, send: Any) -> None:
        nonlocal reached
        reached = True

    async def receive() -> dict[str, Any]:
        return {"type": "websocket.connect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    asyncio.run(ApiKeyMiddleware(app, keys=[KEY], metrics_key=None)(scope, receive, send))
    return sent, reached


def ws_scope(path: str = "/v1/realtime", authorization: bytes | None = None, extensions: dict | None = None) -> dict:
    headers = [(b"authorization", authorization)] if authorization is not None else []
    return {"type": "websocket", "path": path, "headers": headers, "extensions": extensions or {}}


@pytest.mark.parametrize("authorization", [None, b"Bearer wrong", b"Basic " + KEY.encode(), b"Bearer "])
def test_a_websocket_without_the_key_gets_a_401_handshake_answer(authorization) -> None:
    sent, reached = call(ws_scope(authorization=authorization, extensions={"websocket.http.response": {}}))
    assert not reached
    assert sent[0]["type"] == "websocket.http.response.start" and sent[0]["status"] == 401
    assert json.loads(sent[1]["body"])["error"]["code"] == "invalid_api_key"


def test_without_the_http_response_extension_the_handshake_is_closed_with_1008() -> None:
    sent, reached = call(ws_scope())
    assert not reached and sent == [{"type": "websocket.close", "code": 1008}]


def test_the_right_key_and_open_paths_go_through() -> None:
    assert call(ws_scope(authorization=b"bearer " + KEY.encode())) == ([], True)
    assert call(ws_scope(path="/health")) == ([], True)
