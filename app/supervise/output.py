"""A backend process's output: copied line by line into the gateway's log, prefixed `[name] `,
into the per-backend log file when one is configured, and to a `tap` (the operator page's log
rings, `ui.logs`) when given."""

from __future__ import annotations

import asyncio
import collections
import sys
from collections.abc import Callable
from pathlib import Path
from typing import IO

_CHUNK = 65536
_LONGEST_LINE = 16384  # a line longer than this is relayed in pieces


class OutputRelay:
    """Copies a process's output to the gateway's log, each line prefixed `[name] `.

    Keeps the last lines for error messages ("exited while loading; last output: ..."). Reads
    in chunks rather than `readline`, which drops a line longer than the stream's limit.
    """

    def __init__(self, name: str, log_file: Path | None = None, sink: IO[str] | None = None, keep: int = 25,
                 tap: Callable[[str, list[str]], None] | None = None) -> None:
        self.name = name
        self.log_file = log_file
        self.sink = sink
        self.tap = tap
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)

    def last_lines(self, count: int = 15) -> str:
        return "\n".join(list(self.tail)[-count:])

    async def run(self, stream: asyncio.StreamReader) -> None:
        # A log file on local disk is written to the page cache; the write does not wait for it.
        file = None
        if self.log_file is not None:
            self.log_file.parent.mkdir(parents=True, exist_ok=True)
            file = open(self.log_file, "ab")  # noqa: SIM115 - closed in finally
        pending = b""
        try:
            while True:
                chunk = await stream.read(_CHUNK)
                if not chunk:
                    break
                if file is not None:
                    file.write(chunk)
                    file.flush()
                pending += chunk
                *lines, pending = pending.split(b"\n")
                while len(pending) > _LONGEST_LINE:
                    lines.append(pending[:_LONGEST_LINE])
                    pending = pending[_LONGEST_LINE:]
                self._emit(lines)
            if pending:
                self._emit([pending])
        finally:
            if file is not None:
                file.close()

    def _emit(self, lines: list[bytes]) -> None:
        if not lines:
            return
        sink = self.sink or sys.stderr
        out = []
        texts = []
        for raw in lines:
            text = raw.decode("utf-8", "replace").rstrip("\r")
            self.tail.append(text)
            texts.append(text)
            out.append(f"[{self.name}] {text}\n")
        if self.tap is not None:
            self.tap(self.name, texts)
        sink.write("".join(out))
        sink.flush()


__all__ = ["OutputRelay"]
