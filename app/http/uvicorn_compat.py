"""Every uvicorn import of the gateway, in one place, with the versions it was tested against.

The server protocol (`http.protocol`) and the lean request cycle (`http.lean_cycle`) build on
uvicorn's httptools protocol and read and write some of its attributes; those are listed here
(`PROTOCOL_ATTRIBUTES`, `CYCLE_ATTRIBUTES`) and checked against the installed uvicorn by
tests/unit/http/test_uvicorn_compat.py. Outside `SUPPORTED` the gateway serves with stock uvicorn
(`fast_path_problem` says why) instead of failing at request time.
"""

from __future__ import annotations

import importlib.util

import uvicorn
from uvicorn import Config, Server
from uvicorn import run as uvicorn_run
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.supervisors import Multiprocess

# [lowest, first unsupported): pyproject's uvicorn pin says the same.
SUPPORTED = ((0, 54), (0, 60))

# What `http.protocol.GatewayHttpToolsProtocol` uses of uvicorn's HttpToolsProtocol.
PROTOCOL_ATTRIBUTES = (
    "connection_made", "connection_lost", "on_headers_complete", "_start_asgi_task", "on_response_complete",
    "app", "loop", "parser", "cycle", "transport", "flow", "url", "scope", "server_state", "access_log",
    "limit_concurrency", "expect_100_continue", "root_path", "tasks", "logger", "client", "server",
)
# What the gateway reads or sets on uvicorn's RequestResponseCycle (and `LeanCycle` offers too).
CYCLE_ATTRIBUTES = (
    "scope", "transport", "flow", "message_event", "disconnected", "keep_alive", "body", "more_body",
    "response_started", "response_complete", "chunked_encoding", "expected_content_length", "on_response",
    "run_asgi",
)

try:
    from uvicorn.protocols.http.httptools_impl import (
        HEADER_RE,
        HEADER_VALUE_RE,
        STATUS_LINE,
        HttpToolsProtocol,
        RequestResponseCycle,
    )
except ImportError:  # httptools missing: stock uvicorn with h11 (`fast_path_problem` says so)
    # mypy checks the names as imported above; here they only mark "not available".
    HttpToolsProtocol = RequestResponseCycle = None  # type: ignore[assignment,misc]
    HEADER_RE = HEADER_VALUE_RE = STATUS_LINE = None  # type: ignore[assignment]


def version() -> tuple[int, int]:
    major, minor = uvicorn.__version__.split(".")[:2]
    return int(major), int(minor)


def fast_path_problem() -> str | None:
    """Why the gateway's own server protocol cannot be used here (None: it can)."""
    if HttpToolsProtocol is None or importlib.util.find_spec("httptools") is None:
        return "httptools is not installed (pip install 'uvicorn[standard]')"
    low, high = SUPPORTED
    if not low <= version() < high:
        return (f"uvicorn {uvicorn.__version__} is outside the versions the gateway's server protocol was tested "
                f"with ({low[0]}.{low[1]} to before {high[0]}.{high[1]})")
    return None


__all__ = ["CYCLE_ATTRIBUTES", "HEADER_RE", "HEADER_VALUE_RE", "PROTOCOL_ATTRIBUTES", "STATUS_LINE", "SUPPORTED",
           "Config", "FlowControl", "HttpToolsProtocol", "Multiprocess", "RequestResponseCycle", "Server",
           "fast_path_problem", "uvicorn_run", "version"]
