"""Gateway API keys: an ASGI middleware in front of every model route and /v1/*, HTTP and
WebSocket (`/v1/realtime`) alike.

Keys are compared in constant time against every configured key (no early exit that would tell
an attacker how many keys or characters matched). `/health` and `/ready` stay open; `/metrics`
is open unless `metrics_api_key` is set. `/ui` and `/admin/` check the operator keys and the
page's session themselves (`api.operator`), which client keys never open; `/status` also takes an
operator key.
"""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from ..errors import Unauthorized, send_error

_OPEN_PATHS = frozenset({"/health", "/ready", "/docs", "/openapi.json"})
ADMIN_PREFIX = "/admin/"


def _self_guarded(path: str) -> bool:
    return path == "/ui" or path.startswith(("/ui/", "/admin/"))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeyMiddleware:
    def __init__(self, app: Any, keys: list[str], metrics_key: str | None, operator_keys: tuple[str, ...] = ()) -> None:
        self.app = app
        self._keys = [_digest(k) for k in keys]
        self._metrics_key = _digest(metrics_key) if metrics_key else None
        self._status_keys = self._keys + [_digest(k) for k in operator_keys]

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or scope.get("method") == "OPTIONS":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        if path == "/metrics":
            allowed = [self._metrics_key] if self._metrics_key else None
        elif path in _OPEN_PATHS or not self._keys or _self_guarded(path):
            allowed = None
        elif path == "/status":
            allowed = self._status_keys
        else:
            allowed = self._keys
        if allowed is None or _matches(_bearer(scope["headers"]), allowed):
            await self.app(scope, receive, send)
            return
        error = Unauthorized(
            "missing or wrong API key: send it as `Authorization: Bearer <key>` (the OpenAI SDK's api_key)",
            headers={"WWW-Authenticate": "Bearer"},
        )
        if kind == "websocket":
            await _refuse_websocket(scope, send, error)
            return
        await send_error(send, error)


async def _refuse_websocket(scope: dict, send: Any, error: Unauthorized) -> None:
    """Refuse a WebSocket handshake as vLLM does: a 401 with the error body where the server can
    answer the handshake with an HTTP response (uvicorn can), else a close before accepting,
    which the server turns into a 403."""
    if "websocket.http.response" in (scope.get("extensions") or {}):
        payload = error.body()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
                   (b"www-authenticate", b"Bearer")]
        await send({"type": "websocket.http.response.start", "status": error.status, "headers": headers})
        await send({"type": "websocket.http.response.body", "body": payload})
        return
    await send({"type": "websocket.close", "code": 1008})


def authorized(headers: list[tuple[bytes, bytes]], keys: list[str]) -> bool:
    """The request's Bearer token is one of `keys` (compared in constant time)."""
    return _matches(_bearer(headers), [_digest(key) for key in keys])


def _bearer(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    for name, value in headers:
        if name == b"authorization":
            scheme, _, token = value.partition(b" ")
            if scheme.lower() == b"bearer" and token.strip():
                return token.strip()
            return None
    return None


def _matches(token: bytes | None, allowed: list[bytes]) -> bool:
    if token is None:
        return False
    given = hashlib.sha256(token).digest()
    found = False
    for digest in allowed:
        found |= hmac.compare_digest(given, digest)
    return found
