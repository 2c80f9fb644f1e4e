"""Each backend's generation speed and KV-cache use, from its own `vllm:*` metrics.

It reads the merged backend part of the `/metrics` page (`MetricsPage.backend_part`: one scrape
of every backend, cached and shared with Prometheus), so the page asks the backends nothing
more. Tokens per second is the change of `vllm:generation_tokens_total` between two readings; a
drop (the process restarted) starts the count over.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

_BACKEND = re.compile(r'[{,]backend="((?:[^"\\]|\\.)*)"')
_SLEEP = re.compile(r'sleep_state="([a-z_]+)"')
# vLLM's names; `gpu_cache_usage_perc` before 0.11 (reference section 6.4).
_FAMILIES = {
    "vllm:generation_tokens_total": "generation_tokens",
    "vllm:prompt_tokens_total": "prompt_tokens",
    "vllm:kv_cache_usage_perc": "kv_cache_usage",
    "vllm:gpu_cache_usage_perc": "kv_cache_usage",
    "vllm:num_requests_running": "running",
    "vllm:num_requests_waiting": "waiting",
    "vllm:engine_sleep_state": "sleep",
}
_PREFIXES = tuple(_FAMILIES)


@dataclass
class _Reading:
    at: float
    generation_tokens: float = 0.0
    prompt_tokens: float = 0.0
    kv_cache_usage: float | None = None
    running: float = 0.0
    waiting: float = 0.0
    sleep: dict[str, float] = field(default_factory=dict)


class EngineStats:
    """The latest reading per backend and the one before it (for rates)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._latest: dict[str, _Reading] = {}
        self._previous: dict[str, _Reading] = {}
        self._page: bytes | str | None = None

    def update(self, page: bytes | str) -> None:
        """Read one merged backend part (`vllm:*` samples labelled `backend="..."`). The very same
        object again is the metrics page's cached part, no new reading: it would read as no tokens."""
        if page is self._page:
            return
        self._page = page
        if isinstance(page, bytes):
            page = page.decode("utf-8", "replace")
        now = self._clock()
        readings: dict[str, _Reading] = {}
        for line in page.splitlines():
            if not line.startswith(_PREFIXES):
                continue
            name, _, rest = line.partition("{")
            family = _FAMILIES.get(name)
            match = _BACKEND.search(line)
            if family is None or match is None:
                continue
            try:
                value = float(rest.rpartition("} ")[2].split()[0])
            except (ValueError, IndexError):
                continue
            reading = readings.get(match.group(1))
            if reading is None:
                reading = readings[match.group(1)] = _Reading(now)
            if family == "kv_cache_usage":  # several engines or replicas: the fullest one
                reading.kv_cache_usage = max(value, reading.kv_cache_usage or 0.0)
            elif family == "sleep":
                state = _SLEEP.search(line)
                if state is not None:
                    reading.sleep[state.group(1)] = max(value, reading.sleep.get(state.group(1), 0.0))
            else:
                setattr(reading, family, getattr(reading, family) + value)
        for backend, reading in readings.items():
            if backend in self._latest:
                self._previous[backend] = self._latest[backend]
            self._latest[backend] = reading
        for gone in set(self._latest) - set(readings):  # not scraped this time (down): no figures
            del self._latest[gone]
            self._previous.pop(gone, None)

    def of(self, backend: str) -> dict[str, Any] | None:
        """What `/status` shows as the backend's `engine` (None: no reading of it)."""
        latest = self._latest.get(backend)
        if latest is None:
            return None
        previous = self._previous.get(backend)
        generation = prompt = None
        if previous is not None and latest.at > previous.at:
            elapsed = latest.at - previous.at
            generation = _rate(latest.generation_tokens, previous.generation_tokens, elapsed)
            prompt = _rate(latest.prompt_tokens, previous.prompt_tokens, elapsed)
        return {"generation_tokens_per_s": generation, "prompt_tokens_per_s": prompt,
                "kv_cache_usage": round(latest.kv_cache_usage, 4) if latest.kv_cache_usage is not None else None,
                "running": int(latest.running), "waiting": int(latest.waiting),
                "sleep_state": _sleep_word(latest.sleep), "age_s": round(self._clock() - latest.at, 1)}


def _rate(now: float, before: float, elapsed: float) -> float:
    delta = now - before if now >= before else now  # a restart set the counter back to zero
    return round(delta / elapsed, 1)


def _sleep_word(sleep: dict[str, float]) -> str | None:
    """vLLM's `vllm:engine_sleep_state` in one word: awake, or asleep at level 1 or 2."""
    if not sleep:
        return None
    if sleep.get("awake", 0.0) >= 1:
        return "awake"
    if sleep.get("discard_all", 0.0) >= 1:
        return "asleep (level 2)"
    if sleep.get("weights_offloaded", 0.0) >= 1:
        return "asleep (level 1)"
    return "asleep"


__all__ = ["EngineStats"]
