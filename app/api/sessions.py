"""Operator sessions: what the page's HttpOnly cookie holds instead of a key.

A session is a random id, an expiry and a role, signed with a key derived from the configured
operator keys. Signed rather than only remembered, so that every gateway worker (`--workers N`:
each connection may land on another one) knows a session the others issued, and a session ends
when the keys change. Sign-outs are remembered here (bounded) until the session would have
expired anyway.
"""

from __future__ import annotations

import base64
import collections
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable

LIFETIME = 12 * 3600.0  # seconds: a working day; then the key is asked for again
_MOST_SIGNED_OUT = 10_000


class Sessions:
    def __init__(self, keys: list[str], lifetime: float = LIFETIME, clock: Callable[[], float] = time.time) -> None:
        material = b"\0".join(sorted(k.encode() for k in keys))
        self._secret = hmac.new(b"vllm-gateway operator session v1", material, hashlib.sha256).digest()
        self.lifetime = lifetime
        self._clock = clock
        self._signed_out: collections.OrderedDict[str, float] = collections.OrderedDict()

    def issue(self, role: str) -> str:
        session = secrets.token_urlsafe(18)
        expires = int(self._clock() + self.lifetime)
        body = f"{session}.{expires}.{role}"
        return f"{body}.{self._sign(body)}"

    def role(self, token: str | None) -> str | None:
        """The role of a valid, unexpired, not signed-out session, else None."""
        if not token or len(token) > 256:
            return None
        body, _, signature = token.rpartition(".")
        if not hmac.compare_digest(signature.encode(), self._sign(body).encode()):
            return None
        session, expires, role = (body.split(".") + ["", "", ""])[:3]
        try:
            if int(expires) < self._clock():
                return None
        except ValueError:
            return None
        if session in self._signed_out:
            return None
        return role or None

    def sign_out(self, token: str | None) -> None:
        if self.role(token) is None:
            return
        assert token is not None
        session, expires = token.split(".")[:2]
        self._signed_out[session] = float(expires)
        now = self._clock()
        while self._signed_out and (len(self._signed_out) > _MOST_SIGNED_OUT or next(iter(self._signed_out.values())) < now):
            self._signed_out.popitem(last=False)

    def _sign(self, body: str) -> str:
        digest = hmac.new(self._secret, body.encode(), hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).decode().rstrip("=")


__all__ = ["LIFETIME", "Sessions"]
