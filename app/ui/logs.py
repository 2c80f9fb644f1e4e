"""Bounded rings of log lines: each launched backend's output and the gateway's own log.

Every line gets a sequence number shared by all sources, so a live page asks for what is new
since the last number it saw and the order between sources is kept. The backends' lines arrive
from `supervise.output.OutputRelay` (its `tap`); the gateway's through `GatewayLogHandler`,
attached to the `vllm_gateway` logger for the app's lifetime (`attach` / `detach`).
"""

from __future__ import annotations

import collections
import logging
import time
from typing import Any

GATEWAY = "(gateway)"  # the source of the gateway's own log: no backend name has parentheses
_LONGEST = 4000  # characters kept of one line: the page shows a tail, not a file


class LogBook:
    """The last `size` lines of each source."""

    __slots__ = ("size", "seq", "rings")

    def __init__(self, size: int = 1000) -> None:
        self.size = size
        self.seq = 0
        self.rings: dict[str, collections.deque[tuple[int, float, str, str]]] = {}

    def add(self, source: str, lines: list[str], level: str = "") -> None:
        ring = self.rings.get(source)
        if ring is None:
            ring = self.rings[source] = collections.deque(maxlen=self.size)
        now = time.time()
        for line in lines:
            self.seq += 1
            ring.append((self.seq, now, level, line[:_LONGEST]))

    def backend_output(self, name: str, lines: list[str]) -> None:
        """`OutputRelay`'s tap: what a launched backend printed."""
        self.add(name, lines)

    def lines(self, after: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        """Every source's lines above sequence `after`, in order (the last `limit` of them)."""
        found: list[tuple[int, float, str, str, str]] = []
        for source, ring in self.rings.items():
            if ring and ring[-1][0] > after:
                found.extend((seq, at, source, level, text) for seq, at, level, text in ring if seq > after)
        found.sort()
        if limit is not None:
            found = found[-limit:]
        return [{"seq": seq, "time": round(at, 3), "source": source, "level": level, "text": text}
                for seq, at, source, level, text in found]

    def sources(self) -> list[str]:
        return list(self.rings)


class GatewayLogHandler(logging.Handler):
    """The gateway's log records into a `LogBook`, as the page's `gateway` source."""

    def __init__(self, book: LogBook) -> None:
        super().__init__()
        self.book = book
        self.setFormatter(logging.Formatter("%(name)s: %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            text = self.format(record)
        except Exception:  # a bad format string in a log call must not break the caller
            self.handleError(record)
            return
        self.book.add(GATEWAY, text.splitlines() or [""], record.levelname)


def attach(book: LogBook, logger_name: str = "vllm_gateway") -> GatewayLogHandler:
    handler = GatewayLogHandler(book)
    logging.getLogger(logger_name).addHandler(handler)
    return handler


def detach(handler: GatewayLogHandler, logger_name: str = "vllm_gateway") -> None:
    logging.getLogger(logger_name).removeHandler(handler)


__all__ = ["GATEWAY", "GatewayLogHandler", "LogBook", "attach", "detach"]
