"""Every process the benchmark starts, stopped again whatever happens (errors, Ctrl-C, SIGTERM).

Each child gets its own process group, so stopping it also stops what it forked (uvicorn workers,
nginx's worker). Nothing else is ever signalled.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from typing import Any


class Processes:
    def __init__(self) -> None:
        self._children: list[tuple[str, subprocess.Popen]] = []

    def start(self, name: str, argv: list[str], **kwargs: Any) -> subprocess.Popen:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self._children.append((name, proc))
        return proc

    def stop(self, proc: subprocess.Popen, grace: float = 5.0) -> None:
        """SIGTERM the child's group, then SIGKILL what is left after `grace` seconds."""
        if proc.poll() is None:
            _signal_group(proc, signal.SIGTERM)
            with contextlib.suppress(subprocess.TimeoutExpired):
                proc.wait(grace)
        _signal_group(proc, signal.SIGKILL)  # stragglers in the group (forked workers)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(grace)
        self._children = [(n, p) for n, p in self._children if p is not proc]

    def stop_all(self) -> None:
        for _, proc in reversed(list(self._children)):
            self.stop(proc)

    def __enter__(self) -> Processes:
        # Turn SIGTERM into an exception so `finally` blocks and __exit__ run, as for Ctrl-C.
        signal.signal(signal.SIGTERM, _raise_interrupt)
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)  # start_new_session: the group id is the child's pid
    except (ProcessLookupError, PermissionError):
        pass


def _raise_interrupt(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def wait_port(host: str, port: int, proc: subprocess.Popen | None = None, timeout: float = 20.0) -> None:
    """Until something accepts connections on host:port; fail fast if `proc` died meanwhile."""
    import socket

    deadline = time.monotonic() + timeout
    while True:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process {proc.args!r} exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            if time.monotonic() > deadline:
                raise RuntimeError(f"nothing listens on {host}:{port} after {timeout:g} s") from None
            time.sleep(0.05)
