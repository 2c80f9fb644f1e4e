"""Serving ASGI apps under uvicorn: the one place that turns settings into uvicorn's options,
the listening sockets, several workers, several servers in one loop (the demo), and the
process-wide tuning a serving gateway runs with (`tune_gc`)."""

from __future__ import annotations

import asyncio
import gc
import importlib.util
import logging
import socket
from typing import Any

from . import uvicorn_compat as uv

log = logging.getLogger("vllm_gateway.serving")
BACKLOG = 4096  # a burst of new streams must not find the accept queue full
KEEP_ALIVE = 5  # seconds an idle client connection stays open (uvicorn's default)


def options(*, fast_path: bool = True, access_log: bool = False, log_level: str = "warning",
            graceful: float | None = None, keep_alive: int = KEEP_ALIVE) -> dict[str, Any]:
    """uvicorn's options. uvloop and httptools are named rather than left to uvicorn's "auto",
    which silently falls back to asyncio and h11 (several times the CPU per request) when a wheel
    is missing; this says so instead. `fast_path` serves with the gateway's own protocol
    (`http.protocol`), unless the installed uvicorn is not one it was tested with. No `server`
    header. uvicorn's X-Forwarded-For handling (a middleware around every request) only changes
    the client address its access log prints, so it is on only with the access log
    (bench/NOTES.md section 6)."""
    chosen: dict[str, Any] = {
        "server_header": False, "proxy_headers": access_log, "loop": "uvloop", "http": "httptools",
        "access_log": access_log, "log_level": log_level, "timeout_graceful_shutdown": graceful,
        "timeout_keep_alive": keep_alive, "backlog": BACKLOG,
    }
    if importlib.util.find_spec("uvloop") is None:
        chosen["loop"] = "asyncio"
        _warn_slow("uvloop", "asyncio's own event loop")
    problem = uv.fast_path_problem()
    if uv.HttpToolsProtocol is None:
        chosen["http"] = "h11"
        _warn_slow("httptools", "h11")
    elif fast_path and problem is not None:
        log.warning("serving with stock uvicorn, without the gateway's own protocol: %s", problem)
    elif fast_path:
        from .protocol import GatewayHttpToolsProtocol

        chosen["http"] = GatewayHttpToolsProtocol
    return chosen


def _warn_slow(missing: str, instead: str) -> None:
    log.warning("%s is not installed: serving with %s, which costs far more CPU per request "
                "(pip install 'uvicorn[standard]')", missing, instead)


def tune_gc() -> None:
    """For a process that serves the gateway until it exits, once the app is built.

    Every object alive now (imported modules, FastAPI, pydantic, the app) lives as long as the
    process: `gc.freeze()` moves them out of the cyclic collector's reach, so its full collections
    no longer walk a few hundred thousand objects. A larger first generation lets a request's
    short-lived containers die before a collection promotes them (bench/NOTES.md section 6, row 3)."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)


def run(app: Any, host: str, port: int, **serving: Any) -> None:
    """Serve `app` in this process until a signal stops it (exit status 3 if it cannot start)."""
    uv.uvicorn_run(app, host=host, port=port, **serving)


def _tcp_socket(host: str, reuse_port: bool = False) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP explicitly: asyncio disables Nagle only on accepted sockets that say they are
    # TCP, and a response body otherwise waits ~40 ms for the delayed ACK of its head.
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    if reuse_port:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    return sock


def _listening(sock: socket.socket, host: str, port: int) -> socket.socket:
    sock.bind((host, port))
    sock.listen(BACKLOG)
    sock.setblocking(False)
    return sock


def bind(host: str, port: int) -> socket.socket:
    """A listening socket bound now, so a port of 0 tells its real number before serving."""
    return _listening(_tcp_socket(host), host, port)


def listen_reusing_port(host: str, port: int) -> socket.socket:
    """A listening socket in the port's SO_REUSEPORT group: the kernel spreads new connections
    over the group's sockets by their addresses, so each worker holding one gets its share."""
    return _listening(_tcp_socket(host, reuse_port=True), host, port)


class WorkerSocket:
    """What the supervisor hands each worker process in place of a socket: the address, opened
    by the worker itself (`listen_reusing_port`, called when the worker unpickles this).

    uvicorn's workers otherwise share the parent's one listening socket, and whichever worker
    is running when connections arrive accepts all that are waiting (bench/NOTES.md section 10)."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port

    def __reduce__(self) -> tuple[Any, tuple[str, int]]:
        return listen_reusing_port, (self.host, self.port)


def run_workers(factory: str, workers: int, host: str, port: int, **serving: Any) -> None:
    """`factory` (an import string) in `workers` processes under uvicorn's supervisor
    (restarts, signals), each accepting on its own socket (`WorkerSocket`)."""
    if not hasattr(socket, "SO_REUSEPORT"):  # not Linux or BSD: uvicorn's one shared socket
        uv.uvicorn_run(factory, factory=True, workers=workers, host=host, port=port, **serving)
        return
    config = uv.Config(factory, factory=True, workers=workers, host=host, port=port, **serving)
    # Held, bound but not listening, for the supervisor's lifetime: a port in use fails here,
    # once, instead of in every worker; port 0 becomes one port for all.
    reserved = _tcp_socket(host, reuse_port=True)
    try:
        try:
            reserved.bind((host, port))
        except OSError as exc:
            log.error("cannot serve on %s port %d: %s; stop what holds it or choose another `port`",
                      host, port, exc.strerror or exc)
            raise SystemExit(3) from None  # uvicorn's exit status for a failed start-up
        port = reserved.getsockname()[1]
        shown = f"[{host}]" if ":" in host else host
        log.info("serving on http://%s:%d with %d workers, each accepting on its own socket (SO_REUSEPORT)",
                 shown, port, workers)
        # A picklable stand-in: each worker turns it into its own socket when it unpickles it.
        uv.Multiprocess(config, sockets=[WorkerSocket(host, port)]).run()  # type: ignore[list-item]
    finally:
        reserved.close()


def server(app: Any, **serving: Any) -> uv.Server:
    """A uvicorn server for `app` (`options(**serving)`), to run in an event loop of one's own."""
    return uv.Server(uv.Config(app, **options(**serving)))


async def serve_together(servers: list[tuple[uv.Server, socket.socket]]) -> None:
    """Serve several apps in this loop; the first to stop (e.g. on Ctrl-C) stops them all."""
    tasks = [asyncio.create_task(s.serve(sockets=[sock])) for s, sock in servers]
    try:
        await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for s, _ in servers:
            s.should_exit = True
        await asyncio.gather(*tasks, return_exceptions=True)


__all__ = ["BACKLOG", "WorkerSocket", "bind", "listen_reusing_port", "options", "run", "run_workers",
           "serve_together", "server", "tune_gc"]
