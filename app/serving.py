"""Running ASGI apps under uvicorn, alone or several in one event loop (the demo), and the
process-wide settings a serving gateway runs with (`fast_options`, `tune_gc`)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import socket
from typing import Any

import uvicorn

from .downstream import GatewayHttpToolsProtocol

log = logging.getLogger("vllm_gateway.serving")


def fast_options(access_log: bool = False) -> dict[str, Any]:
    """uvloop and httptools, named rather than left to uvicorn's "auto": auto silently falls back
    to asyncio and h11 (2-3x the CPU per request) when a wheel is missing; this says so instead.
    No `server` header: nothing for a client to learn, one header less to write per response.
    uvicorn's X-Forwarded-For handling (a middleware around every request) only changes the client
    address that its access log prints, so it is on only with the access log (4 % CPU measured)."""
    options: dict[str, Any] = {"server_header": False, "proxy_headers": access_log, "loop": "uvloop", "http": "h11"}
    if importlib.util.find_spec("uvloop") is None:
        options["loop"] = "asyncio"
        _warn_slow("uvloop", "asyncio's own event loop")
    if GatewayHttpToolsProtocol is not None:
        options["http"] = GatewayHttpToolsProtocol
    else:
        _warn_slow("httptools", "h11")
    return options


def _warn_slow(missing: str, instead: str) -> None:
    log.warning("%s is not installed: serving with %s, which costs far more CPU per request "
                "(pip install 'uvicorn[standard]')", missing, instead)


def tune_gc() -> None:
    """For a process that serves the gateway until it exits, once the app is built.

    Every object alive now (imported modules, FastAPI, pydantic, the app) lives as long as the
    process: `gc.freeze()` moves them out of the cyclic collector's reach, so its full collections
    no longer walk a few hundred thousand objects (measured: the c=64 p99 falls from ~40 to ~13 ms
    and CPU per request by 6 %). A larger first generation lets a request's short-lived
    containers die before a collection promotes them (a further 2 %)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket bound now, so a port of 0 tells its real number before serving."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio disables Nagle only on accepted sockets that say they are
    # TCP, and a response body otherwise waits ~40 ms for the delayed ACK of its head.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.setblocking(False)
    return sock


def _reusing_port(host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)  # IPPROTO_TCP: see bind()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def listen_reusing_port(host: str, port: int, backlog: int) -> socket.socket:
    """A listening socket in the port's SO_REUSEPORT group: the kernel spreads new connections
    over the group's sockets by their addresses, so each worker holding one gets its share."""
    sock = _reusing_port(host)
    sock.bind((host, port))
    sock.listen(backlog)
    sock.setblocking(False)
    return sock


class WorkerSocket:
    """What the supervisor hands each worker process in place of a socket: the address, opened
    by the worker itself (`listen_reusing_port`, called when the worker unpickles this).

    uvicorn's workers otherwise share the parent's one listening socket, and whichever worker
    is running when connections arrive accepts all that are waiting: measured with 4 workers and
    64 keep-alive connections, one to two workers served everything and the rest idled."""

    def __init__(self, host: str, port: int, backlog: int) -> None:
        self.host, self.port, self.backlog = host, port, backlog

    def __reduce__(self) -> tuple[Any, tuple[str, int, int]]:
        return listen_reusing_port, (self.host, self.port, self.backlog)


def run_workers(app: str, workers: int, **options: Any) -> None:
    """`app` (an import string of a factory) in `workers` processes under uvicorn's supervisor
    (restarts, signals), each accepting on its own socket (`WorkerSocket`)."""
    from uvicorn.supervisors import Multiprocess

    if not hasattr(socket, "SO_REUSEPORT"):  # not Linux or BSD: uvicorn's one shared socket
        uvicorn.run(app, factory=True, workers=workers, **options)
        return
    config = uvicorn.Config(app, factory=True, workers=workers, **options)
    host, backlog = config.host, config.backlog
    # Held, bound but not listening, for the supervisor's lifetime: a port in use fails here,
    # once, instead of in every worker; port 0 becomes one port for all.
    reserved = _reusing_port(host)
    try:
        try:
            reserved.bind((host, config.port))
        except OSError as exc:
            log.error("cannot serve on %s port %d: %s; stop what holds it or choose another `port`",
                      host, config.port, exc.strerror or exc)
            raise SystemExit(3) from None  # uvicorn's exit status for a failed start-up
        port = reserved.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("serving on http://%s:%d with %d workers, each accepting on its own socket (SO_REUSEPORT)",
                 shown, port, workers)
        Multiprocess(config, sockets=[WorkerSocket(host, port, backlog)]).run()  # type: ignore[list-item]
    finally:
        reserved.close()


def server(app: Any, *, log_level: str = "warning", access_log: bool = False, graceful: float | None = None,
           **extra: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful,
        backlog=2048,
        timeout_keep_alive=5,
        **{**fast_options(access_log), **extra},
    )
    return uvicorn.Server(config)


async def serve_together(servers: list[tuple[uvicorn.Server, socket.socket]]) -> None:
    """Serve several apps in this loop; the first to stop (e.g. on Ctrl-C) stops them all."""
    tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for s, _ in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)
