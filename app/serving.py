"""Running ASGI apps under uvicorn, alone or several in one event loop (the demo)."""

from __future__ import annotations

import asyncio
import socket
from typing import Any

import uvicorn


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


def server(app: Any, *, log_level: str = "warning", access_log: bool = False, graceful: float | None = None,
           **extra: Any) -> uvicorn.Server:
    config = uvicorn.Config(
        app,
        log_level=log_level,
        access_log=access_log,
        timeout_graceful_shutdown=graceful,
        backlog=2048,
        timeout_keep_alive=5,
        **extra,
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
