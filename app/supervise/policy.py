"""When to restart a backend process and when to give up: pure functions, tested alone."""

from __future__ import annotations

import contextlib
import signal


def backoff(failures: int, initial: float, cap: float) -> float:
    """Seconds to wait before the next start after `failures` consecutive failures (1, 2, ...)."""
    return min(initial * 2 ** min(failures - 1, 30), cap)


def unhealthy_too_long(failing_since: float | None, now: float, limit: float) -> float | None:
    """How long health checks have failed without a break, once that is `limit` s or more; else None.

    `limit` 0 turns the rule off: a running process is then only restarted when it exits.
    """
    if not limit or failing_since is None:
        return None
    failing = now - failing_since
    return failing if failing >= limit else None


def count_failure(failures: int, healthy_for: float | None, cap: float) -> int:
    """The consecutive-failure count after one more failure.

    A process that served healthily for `cap` s (launch.restart_backoff_max) or longer starts the
    count again, so the next delay is the initial one. Time spent failing /health does not count
    as healthy, so a process that becomes ready and then always turns unhealthy still adds up.
    """
    if healthy_for is not None and healthy_for >= cap:
        return 1
    return failures + 1


def gives_up(failures: int, max_restarts: int) -> bool:
    """True once `failures` in a row exceed `max_restarts` (0: never give up, keep backing off)."""
    return max_restarts > 0 and failures > max_restarts


def describe_exit(code: int | None) -> str:
    if code is None:
        return "an unknown status"
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"signal {signal.Signals(-code).name} (exit code {code})"
    return f"exit code {code}"


__all__ = ["backoff", "count_failure", "describe_exit", "gives_up", "unhealthy_too_long"]
