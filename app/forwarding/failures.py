"""Every way talking to a backend can fail, mapped once: metric kind, breaker, retry, answer.

Foreign exceptions (httpx's, websockets', the OS's) are first turned into a cause (`cause_of`),
then `TABLE[(phase, cause)]` says what that failure means in that phase of an exchange:
- `kind`: the `kind` label of `gateway_upstream_errors_total` (None: not an upstream error);
- `breaker`: whether it counts towards opening the backend's circuit (only failures to reach it);
- `retryable`: nothing reached the model and nothing the client, so it is safe to try again;
- `answer`: the error the client gets (None: the backend's own answer is relayed).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import httpx
from websockets.exceptions import InvalidHandshake, InvalidStatus, InvalidURI

from ..errors import BadGateway, GatewayError, GatewayTimeout
from ..metrics import GatewayMetrics
from ..routing.admission import unavailable
from ..routing.backend import Backend

# Phases of an exchange.
HEAD = "head"  # sending the request and waiting for the response head
BODY = "body"  # reading a whole (non-streamed) body
STREAM = "stream"  # relaying a stream
SESSION = "session"  # a realtime WebSocket session
# Causes.
DEADLINE = "deadline"  # the exchange's own watchdog fired (`forwarding.deadline`)
CONNECT_TIMEOUT = "connect_timeout"
REFUSED = "refused"
READ_TIMEOUT = "read_timeout"  # a timeout inside httpx's transport
BROKEN = "broken"  # a malformed or cut-off answer
ANSWERED_503 = "answered_503"
ANSWERED_5XX = "answered_5xx"
REFUSED_SESSION = "refused_session"  # a WebSocket handshake answered with a non-101 status
NOT_JSON = "not_json"
CUT_OFF = "cut_off"  # a realtime session that ended without a close frame

Answer = Callable[[Backend, str], GatewayError]


@dataclass(frozen=True, slots=True)
class Failure:
    kind: str | None
    breaker: bool
    retryable: bool
    answer: Answer | None


def _no_head(backend: Backend, detail: str) -> GatewayError:
    return GatewayTimeout(f"backend {backend.name!r} sent no response within {detail}; "
                          f"the request was cancelled upstream")


def _body_stopped(backend: Backend, detail: str) -> GatewayError:
    return GatewayTimeout(f"backend {backend.name!r} stopped sending its response")


def _stream_stopped(backend: Backend, detail: str) -> GatewayError:
    return GatewayTimeout(f"backend {backend.name!r} stream stopped: {detail or 'timeouts.stream_idle'} exceeded; "
                          f"the stream was closed")


def _no_connection_in_time(backend: Backend, detail: str) -> GatewayError:
    return unavailable(backend, "did not accept a connection in time")


def _refused(backend: Backend, detail: str) -> GatewayError:
    return unavailable(backend, "refused the connection")


def _answered_503(backend: Backend, detail: str) -> GatewayError:
    return unavailable(backend, "answered 503")


def _broken(what: str) -> Answer:
    return lambda backend, detail: BadGateway(f"backend {backend.name!r} {what} ({detail})")


def _not_json(backend: Backend, detail: str) -> GatewayError:
    return BadGateway(f"backend {backend.name!r} promised JSON but sent something else")


def _session_refused(backend: Backend, detail: str) -> GatewayError:
    return BadGateway(f"backend {backend.name!r} refused the realtime session with HTTP {detail} "
                      f"(does its model support realtime transcription?)", code="realtime_refused")


def _session_broken(backend: Backend, detail: str) -> GatewayError:
    return BadGateway(f"backend {backend.name!r} broke off the realtime session")


TABLE: dict[tuple[str, str], Failure] = {
    (HEAD, DEADLINE): Failure("timeout", False, False, _no_head),
    (HEAD, READ_TIMEOUT): Failure("timeout", False, False, _no_head),
    (HEAD, CONNECT_TIMEOUT): Failure("connect_timeout", True, True, _no_connection_in_time),
    (HEAD, REFUSED): Failure("connect", True, True, _refused),
    (HEAD, BROKEN): Failure("protocol", False, False, _broken("answered with a broken HTTP response")),
    (HEAD, ANSWERED_503): Failure("status_5xx", False, True, _answered_503),
    (HEAD, ANSWERED_5XX): Failure("status_5xx", False, False, None),
    (BODY, DEADLINE): Failure("timeout", False, False, _body_stopped),
    (BODY, READ_TIMEOUT): Failure("timeout", False, False, _body_stopped),
    (BODY, BROKEN): Failure("disconnect", False, False, _broken("broke off its response")),
    (BODY, NOT_JSON): Failure("invalid_response", False, False, _not_json),
    (STREAM, DEADLINE): Failure("stream_timeout", False, False, _stream_stopped),
    (STREAM, READ_TIMEOUT): Failure("stream_timeout", False, False, _stream_stopped),
    (STREAM, BROKEN): Failure("disconnect", False, False, _broken("broke off the stream")),
    (SESSION, CONNECT_TIMEOUT): Failure("connect_timeout", True, False, _no_connection_in_time),
    (SESSION, REFUSED): Failure("connect", True, False, _refused),
    (SESSION, BROKEN): Failure("protocol", False, False, _broken("broke the WebSocket handshake")),
    (SESSION, ANSWERED_503): Failure("status_5xx", False, False, _answered_503),
    (SESSION, ANSWERED_5XX): Failure("status_5xx", False, False, _session_refused),
    (SESSION, REFUSED_SESSION): Failure(None, False, False, _session_refused),
    (SESSION, CUT_OFF): Failure("disconnect", False, False, _session_broken),
}
# Every `kind` label, created at zero for every backend at start-up (dashboards see 0, not "no data").
KINDS = tuple(sorted({f.kind for f in TABLE.values() if f.kind is not None}))


def cause_of(exc: BaseException) -> tuple[str, str]:
    """The cause of a foreign exception, and the detail its message shows."""
    if isinstance(exc, httpx.ConnectTimeout):
        return CONNECT_TIMEOUT, ""
    if isinstance(exc, httpx.ConnectError):
        return REFUSED, ""
    if isinstance(exc, httpx.TimeoutException):
        return READ_TIMEOUT, ""
    if isinstance(exc, InvalidStatus):
        status = exc.response.status_code
        return (ANSWERED_503 if status == 503 else ANSWERED_5XX if status >= 500 else REFUSED_SESSION), str(status)
    if isinstance(exc, (InvalidHandshake, InvalidURI, httpx.HTTPError)):
        return BROKEN, type(exc).__name__
    if isinstance(exc, TimeoutError):
        return CONNECT_TIMEOUT, ""
    if isinstance(exc, OSError):
        return REFUSED, ""
    raise TypeError(f"not an upstream failure: {exc!r}")  # a bug: let it surface


def while_reading(exc: httpx.HTTPError) -> tuple[str, str]:
    """The cause of a failure after the response head arrived: a timeout, or a broken answer."""
    if isinstance(exc, httpx.TimeoutException):
        return READ_TIMEOUT, ""
    return BROKEN, type(exc).__name__


def failed(metrics: GatewayMetrics, backend: Backend, phase: str, cause: str,
           detail: str = "") -> tuple[Failure, GatewayError | None]:
    """Record the failure (metric, breaker) and return it with the client's answer."""
    failure = TABLE[(phase, cause)]
    if failure.kind is not None:
        metrics.upstream_error(backend.name, failure.kind)
    if failure.breaker:
        backend.breaker.record_failure()
    return failure, failure.answer(backend, detail) if failure.answer is not None else None


__all__ = ["BODY", "HEAD", "KINDS", "SESSION", "STREAM", "TABLE", "Failure", "cause_of", "failed", "while_reading"]
