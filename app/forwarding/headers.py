"""Headers on the way up and down: hop-by-hop ones dropped (RFC 9110 7.6.1), request ids."""

from __future__ import annotations

import os

# Never forwarded in either direction, plus headers the gateway sets itself.
HOP_BY_HOP = frozenset({
    b"connection", b"keep-alive", b"proxy-connection", b"proxy-authenticate", b"proxy-authorization",
    b"te", b"trailer", b"transfer-encoding", b"upgrade", b"host", b"content-length", b"expect",
})
NOT_FORWARDED_UP = HOP_BY_HOP | {b"authorization", b"x-request-id", b"x-api-key", b"cookie"}
NOT_RELAYED_DOWN = HOP_BY_HOP | {b"date", b"server", b"x-request-id"}
_PLAIN_CONNECTION = frozenset({b"close", b"keep-alive"})  # name no header: nothing more to drop


def header(headers: list[tuple[bytes, bytes]], name: bytes) -> bytes | None:
    """The first value of `name` (lower-case, as ASGI servers give them)."""
    for key, value in headers:
        if key == name:
            return value
    return None


def request_id(headers: list[tuple[bytes, bytes]]) -> bytes:
    """The client's `X-Request-ID` when it is a sane token, else a new one."""
    given = header(headers, b"x-request-id")
    if given and len(given) <= 128 and given.isascii() and all(33 <= c <= 126 for c in given):
        return given
    return os.urandom(16).hex().encode()


def upstream_headers(client: list[tuple[bytes, bytes]], defaults: dict[bytes, bytes],
                     rid: bytes) -> list[tuple[bytes, bytes]]:
    """What the backend gets: the client's end-to-end headers, the backend's own defaults (its
    API key) where the client sent none, and the request id."""
    drop = NOT_FORWARDED_UP
    connection = header(client, b"connection")
    if connection and connection.lower() not in _PLAIN_CONNECTION:
        # Headers the client named as hop-by-hop go no further.
        drop = drop | {token.strip().lower() for token in connection.split(b",")}
    forwarded = [(k, v) for k, v in client if k not in drop]
    if defaults:
        sent = {k for k, _ in forwarded}
        forwarded.extend((k, v) for k, v in defaults.items() if k not in sent)
    forwarded.append((b"x-request-id", rid))
    return forwarded


__all__ = ["HOP_BY_HOP", "NOT_FORWARDED_UP", "NOT_RELAYED_DOWN", "header", "request_id", "upstream_headers"]
