"""A backend's states, each written by one owner only.

- `Health`: what `GET /health` found, written by the health monitor (`routing.health`); a real
  answer to a forwarded request is reported to it as an event (`answered`).
- `Lifecycle`: a launched backend's process, written by its supervisor unit
  (`supervise.supervisor`) and nothing else.
- `Residency` (`residency.state`): awake or asleep, written by the residency manager.

`Backend.state` (`routing.backend`) derives the one word that routing reads and `/status` shows, so
no owner has to check after an `await` whether another moved the backend meanwhile: a health record
taken while the supervisor replaced the process carries the old process's epoch and is ignored.
"""

from __future__ import annotations

import time

UNKNOWN, STARTING, READY, UNHEALTHY, RESTARTING, FAILED, STOPPED = (
    "unknown", "starting", "ready", "unhealthy", "restarting", "failed", "stopped",
)
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


__all__ = ["FAILED", "READY", "RESTARTING", "ROUTABLE_STATES", "STARTING", "STOPPED", "UNHEALTHY", "UNKNOWN",
           "Health", "Lifecycle"]
