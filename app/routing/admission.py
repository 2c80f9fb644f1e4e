"""Whether a backend can take a request now, and the 503 a client gets when it cannot.

One policy for HTTP requests and realtime sessions: a backend that is not routable (starting,
restarting, failed, stopped) or whose circuit is open is refused at once with `Retry-After`,
instead of every client waiting on connect timeouts. An on-demand backend that is asleep is not
refused: the request waits for its wake (`residency.manager`); only one whose last wake failed
is, until it may be tried again.
"""

from __future__ import annotations

from ..errors import ServiceUnavailable
from .backend import Backend
from .state import AWAKE, FAILED


def refusal(backend: Backend) -> ServiceUnavailable | None:
    """Why this backend cannot take a request right now, if it cannot."""
    residency = backend.residency
    if residency is not None and residency.state != AWAKE and not backend.given_up:
        if residency.state == FAILED and residency.retry_in() > 0:
            return unavailable(backend, f"failed to wake ({residency.error})", residency.retry_in())
        return None  # asleep, waking or going to sleep: the request waits for the next wake
    if not backend.routable:
        return unavailable(backend)
    if not backend.breaker.allow():
        return unavailable(backend, "is failing (circuit open)", backend.breaker.retry_after())
    return None


def unavailable(backend: Backend, what: str | None = None, retry_after_s: float | None = None) -> ServiceUnavailable:
    if what is None and backend.given_up:
        return ServiceUnavailable(
            f"backend {backend.name!r} failed and is no longer restarted; GET /status shows why; "
            f"it serves again once the cause is fixed and the gateway restarted",
            headers={"Retry-After": "60"})
    retry_after = max(1, round(retry_after_s if retry_after_s is not None else retry_hint(backend)))
    detail = what or f"is {backend.state}"
    return ServiceUnavailable(
        f"backend {backend.name!r} {detail}; retry in {retry_after} s (GET /status shows backend states)",
        headers={"Retry-After": str(retry_after)},
    )


def retry_hint(backend: Backend) -> float:
    """Seconds a client should wait: a launched process takes a while to come back."""
    return 5.0 if backend.launched else 1.0


__all__ = ["refusal", "retry_hint", "unavailable"]
