"""A minimal client of Firefox's Marionette protocol (length-prefixed JSON over TCP), enough to
drive Debian's firefox-esr from a test: Playwright's own Firefox build cannot be downloaded on
these machines, and its WebDriver BiDi mode needs a newer Firefox than the ESR."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

FIREFOX = shutil.which("firefox-esr") or shutil.which("firefox") or "/usr/bin/firefox-esr"


class Marionette:
    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.pending = b""
        self.last = 0
        self._read()  # the server's greeting

    def _read(self) -> Any:
        while b":" not in self.pending:
            self.pending += self._recv()
        size, _, rest = self.pending.partition(b":")
        while len(rest) < int(size):
            rest += self._recv()
        self.pending = rest[int(size):]
        return json.loads(rest[:int(size)])

    def _recv(self) -> bytes:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionError("Firefox closed the Marionette connection")
        return data

    def command(self, name: str, **params: Any) -> Any:
        self.last += 1
        message = json.dumps([0, self.last, name, params]).encode()
        self.sock.sendall(str(len(message)).encode() + b":" + message)
        _, _, error, result = self._read()
        if error:
            raise RuntimeError(f"{name}: {error}")
        return result

    def run(self, script: str, *args: Any) -> Any:
        """A function body run in the page (`arguments[0]`, ...); what it returns."""
        return self.command("WebDriver:ExecuteScript", script=script, args=list(args))["value"]


@contextlib.contextmanager
def firefox(profile: Path, port: int) -> Iterator[Marionette]:
    profile.mkdir(parents=True, exist_ok=True)
    (profile / "user.js").write_text(f'user_pref("marionette.port", {port});\n')
    proc = subprocess.Popen([FIREFOX, "--headless", "--marionette", "--no-remote", "--profile", str(profile)],
                            env={**os.environ, "HOME": str(profile)}, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", port), timeout=30)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("Firefox did not open its Marionette port") from None
                time.sleep(0.2)
        with sock:
            client = Marionette(sock)
            client.command("WebDriver:NewSession", capabilities={})
            yield client
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
