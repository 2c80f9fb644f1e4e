"""The OpenAI error body, and the one mapping from gateway failures to HTTP statuses.

Every error the gateway itself produces goes through `GatewayError`, so clients always see
`{"error": {"message", "type", "param", "code"}}` with a status that matches the cause.
"""

from __future__ import annotations

from typing import Any

import orjson


class ClientGone(Exception):
    """The client left before its request reached a backend (HTTP body unread, WebSocket closed)."""


class GatewayError(Exception):
    """A failure answered by the gateway itself (never by a backend)."""

    status: int = 500
    type: str = "internal_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        status: int | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.headers = headers or {}

    def body(self) -> bytes:
        return error_body(self.message, self.type, self.param, self.code)


class BadRequest(GatewayError):
    status, type, code = 400, "invalid_request_error", "invalid_request"


class Unauthorized(GatewayError):
    status, type, code = 401, "authentication_error", "invalid_api_key"


class Forbidden(GatewayError):
    status, type, code = 403, "permission_error", "forbidden"


class ModelNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "model_not_found"


class ResponseNotFound(GatewayError):
    status, type, code = 404, "invalid_request_error", "response_not_found"


class MethodNotAllowed(GatewayError):
    status, type, code = 405, "invalid_request_error", "method_not_allowed"


class PayloadTooLarge(GatewayError):
    status, type, code = 413, "invalid_request_error", "request_too_large"


class UnsupportedMediaType(GatewayError):
    status, type, code = 415, "invalid_request_error", "unsupported_media_type"


class TooManyRequests(GatewayError):
    status, type, code = 429, "rate_limit_error", "rate_limit_exceeded"


class BadGateway(GatewayError):
    status, type, code = 502, "upstream_error", "bad_gateway"


class ServiceUnavailable(GatewayError):
    status, type, code = 503, "service_unavailable", "backend_unavailable"


class GatewayTimeout(GatewayError):
    status, type, code = 504, "timeout_error", "upstream_timeout"


def error_body(message: str, type_: str, param: str | None = None, code: str | int | None = None) -> bytes:
    return orjson.dumps({"error": {"message": message, "type": type_, "param": param, "code": code}})


def sse_error_event(error: GatewayError) -> bytes:
    """The last event of a stream that failed after its 200 was sent (vLLM's own shape)."""
    return b"data: " + error.body() + b"\n\ndata: [DONE]\n\n"


async def send_error(send: Any, error: GatewayError, request_id: bytes | None = None) -> None:
    """Answer an ASGI request with `error` in OpenAI shape."""
    payload = error.body()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    if request_id is not None:
        headers.append((b"x-request-id", request_id))
    headers.extend((k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in error.headers.items())
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload, "more_body": False})
