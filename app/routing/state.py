"""A backend's states, each written by one owner only.

- `Health`: what `GET /health` found, written by the health monitor (`routing.health`); a real
  answer to a forwarded request is reported to it as an event (`answered`).
- `Lifecycle`: a launched backend's process, written by its supervisor unit
  (`supervise.supervisor`) and nothing else.
- `Residency`: an on-demand backend awake or asleep, written by the residency manager
  (`residency.manager`) and nothing else.

`Backend.state` (`routing.backend`) derives the one word that routing reads and `/status` shows, so
no owner has to check after an `await` whether another moved the backend meanwhile: a health record
taken while the supervisor replaced the process carries the old process's epoch and is ignored.
"""

from __future__ import annotations

import time
from typing import Any

UNKNOWN, STARTING, READY, UNHEALTHY, RESTARTING, FAILED, STOPPED = (
    "unknown", "starting", "ready", "unhealthy", "restarting", "failed", "stopped",
)
PARKED = "parked"  # an on-demand backend's process ended on purpose (restart mode, or after it misbehaved asleep)
# Unhealthy backends stay routable through their circuit breaker, which lets a trial through.
ROUTABLE_STATES = frozenset({UNKNOWN, READY, UNHEALTHY})


class Health:
    """The health monitor's record: state, why it failed, and since when every probe failed.

    `error` is what `/status` shows (an answered request clears it); `probe_error` and
    `failing_since` are the probes' alone, which the supervisor's restart rule reads. `epoch` is
    the launched process the record is about (`Lifecycle.epoch`; 0 for external backends); a
    record of an earlier process does not count."""

    __slots__ = ("state", "error", "probe_error", "failing_since", "epoch")

    def __init__(self) -> None:
        self.state = UNKNOWN
        self.error: str | None = None
        self.probe_error: str | None = None
        self.failing_since: float | None = None
        self.epoch = 0

    def passed(self, epoch: int) -> bool:
        """A probe answered 200; True when the backend was not ready before (its models are re-read)."""
        # A new process's first record: the supervisor saw it ready and read its models already.
        became_ready = self.epoch == epoch and self.state != READY
        self.state, self.error, self.probe_error, self.failing_since, self.epoch = READY, None, None, None, epoch
        return became_ready

    def failed(self, epoch: int, error: str) -> None:
        if self.epoch != epoch:
            self.failing_since = None
        self.state, self.error, self.probe_error, self.epoch = UNHEALTHY, error, error, epoch
        if self.failing_since is None:
            self.failing_since = time.monotonic()

    def answered(self) -> None:
        """Event: a forwarded request got a real answer. The backend is there, whatever the last
        probe said; `failing_since` and `probe_error` stay: only probes decide how long /health failed."""
        if self.state == UNHEALTHY:
            self.state, self.error = READY, None


class Lifecycle:
    """A launched backend's process: its state and what the supervisor remembers of it."""

    __slots__ = ("state", "error", "epoch", "pid", "started_at", "restarts", "last_exit_code", "given_up")

    def __init__(self) -> None:
        self.state = STARTING
        self.error: str | None = None
        self.epoch = 0  # counts the processes that became ready
        self.pid: int | None = None
        self.started_at: float | None = None
        self.restarts = 0
        self.last_exit_code: int | None = None
        self.given_up = False  # failed, and not started again

    def starting(self, first: bool) -> None:
        self.state = STARTING if first else RESTARTING

    def spawned(self, pid: int) -> None:
        self.pid, self.started_at = pid, time.monotonic()

    def ready(self) -> None:
        self.state, self.error = READY, None
        self.epoch += 1

    def restarting(self, error: str) -> None:
        """The process exited or is being ended: not routable, and no longer probed, from here on."""
        self.state, self.error = RESTARTING, error

    def failed(self, error: str, *, give_up: bool = False) -> None:
        self.state, self.error = FAILED, error
        self.given_up = self.given_up or give_up

    def ended(self, exit_code: int | None) -> None:
        if exit_code is not None:
            self.last_exit_code = exit_code
        self.pid = self.started_at = None

    def parked(self, error: str | None = None) -> None:
        """Ended on purpose, not a failure: no backoff, no restart until the residency manager asks."""
        self.state = PARKED
        if error is not None:
            self.error = error

    def restarted(self) -> None:
        self.restarts += 1

    def resumed(self) -> None:
        """Started again by an operator after the supervisor gave up."""
        self.given_up = False

    def stopped(self) -> None:
        if not self.given_up:
            self.state = STOPPED

    def uptime(self) -> float | None:
        if self.started_at is None or self.pid is None:
            return None
        return time.monotonic() - self.started_at


AWAKE, ASLEEP, WAKING, GOING_TO_SLEEP = "awake", "asleep", "waking", "going_to_sleep"  # and FAILED, above
# Counted against gpu.memory_budget.
HOLDS_MEMORY = frozenset({AWAKE, WAKING, GOING_TO_SLEEP})
SLEEP, WAKE = "sleep", "wake"  # the directions of a swap (a metrics label)


class Residency:
    """An on-demand backend's residency: whether it holds its GPU memory, written by the residency
    manager (`residency.manager`) alone.

    States: `awake` (serving; holds its share), `going_to_sleep` (draining its in-flight requests,
    then sleeping: still holds its share, takes no new requests), `asleep` (holds nothing; the next
    request wakes it), `waking` (taking its share back), `failed` (its last wake failed: holds
    nothing, requests are refused until `retry_at`, then the next one tries again). `Backend.state`
    shows these words in place of the others while the backend is not awake."""

    __slots__ = ("swap", "level", "state", "since", "awake_since", "last_used", "used_since_wake", "in_flight",
                 "waiting", "swaps", "last_wake_s", "error", "retry_at", "failures", "cold")

    def __init__(self, swap: str, level: int) -> None:
        self.swap = swap  # "sleep" or "restart"
        self.level = level
        self.state = ASLEEP
        self.since = time.monotonic()
        self.awake_since: float | None = None
        self.last_used: float | None = None  # monotonic time a request last began or ended here
        self.used_since_wake = False  # min_awake protects only a backend woken for, or used by, requests
        self.in_flight = 0  # requests holding it awake (forwarded or about to be)
        self.waiting = 0  # requests waiting for its wake
        self.swaps = {SLEEP: 0, WAKE: 0}
        self.last_wake_s: float | None = None
        self.error: str | None = None
        self.retry_at: float | None = None  # monotonic; while failed
        self.failures = 0  # wakes failed in a row
        self.cold = True  # no process: the next wake starts one (restart mode, or after a process was ended)

    @property
    def holds_memory(self) -> bool:
        return self.state in HOLDS_MEMORY

    def retry_in(self, now: float | None = None) -> float:
        """Seconds until a failed backend may be woken again (0 once it may)."""
        if self.state != FAILED or self.retry_at is None:
            return 0.0
        return max(0.0, self.retry_at - (time.monotonic() if now is None else now))

    # -- transitions (the manager's) ------------------------------------------------------------
    def _to(self, state: str) -> None:
        self.state, self.since = state, time.monotonic()

    def started(self) -> None:
        """Its process is being started awake (the first start of a sleep-mode backend)."""
        self._to(AWAKE)
        self.awake_since, self.used_since_wake, self.cold = time.monotonic(), False, False

    def waking(self) -> None:
        self._to(WAKING)

    def awake(self, took: float, for_requests: bool) -> None:
        self._to(AWAKE)
        self.awake_since, self.used_since_wake, self.cold = time.monotonic(), for_requests, False
        self.last_wake_s, self.error, self.retry_at, self.failures = took, None, None, 0
        self.swaps[WAKE] += 1

    def going_to_sleep(self) -> None:
        self._to(GOING_TO_SLEEP)

    def back_awake(self) -> None:
        """A drain that is no longer needed: it serves on without having slept."""
        self._to(AWAKE)

    def asleep(self, cold: bool, note: str | None = None) -> None:
        counted = self.state in HOLDS_MEMORY
        self._to(ASLEEP)
        self.awake_since, self.cold = None, cold
        if note is not None:
            self.error = note
        if counted:
            self.swaps[SLEEP] += 1

    def failed(self, error: str, retry_at: float) -> None:
        self._to(FAILED)
        self.awake_since, self.cold = None, True
        self.error, self.retry_at = error, retry_at
        self.failures += 1

    def status(self) -> dict[str, Any]:
        now = time.monotonic()
        idle = None if self.last_used is None or self.in_flight else round(now - self.last_used, 1)
        last_used = None
        if self.last_used is not None:
            last_used = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (now - self.last_used)))
        return {
            "mode": "on_demand", "swap": self.swap, "sleep_level": self.level if self.swap == "sleep" else None,
            "state": self.state, "awake": self.state == AWAKE, "since_s": round(now - self.since, 1),
            "last_used": last_used, "idle_s": idle, "in_flight": self.in_flight, "waiting": self.waiting,
            "swaps": dict(self.swaps), "last_wake_s": None if self.last_wake_s is None else round(self.last_wake_s, 3),
            "error": self.error, "retry_in_s": round(self.retry_in(now), 1) if self.state == FAILED else None,
        }


__all__ = ["ASLEEP", "AWAKE", "FAILED", "GOING_TO_SLEEP", "HOLDS_MEMORY", "PARKED", "READY", "SLEEP", "WAKE", "WAKING",
           "Residency", "RESTARTING", "ROUTABLE_STATES", "STARTING", "STOPPED", "UNHEALTHY", "UNKNOWN",
           "Health", "Lifecycle"]
