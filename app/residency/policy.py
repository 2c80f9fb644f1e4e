"""Whom to wake next and whom to put to sleep for it: pure functions over a snapshot, tested alone.

The rules (the README's "When the models don't all fit"):
- a backend that is wanted (a request, a start, an operator waits for it) is woken as soon as it
  fits beside what holds memory; wanted backends are taken in the order of their oldest waiter,
  and one wake serves every request waiting for it;
- to make room, least-recently-used awake backends are put to sleep: idle ones at once, once they
  have been awake `min_awake` (a backend woken but never used may go at once); busy ones (requests
  in flight) only once the oldest waiter has waited `max_swap_delay`, so the awake model's queue is
  served first but no model starves. A busy one drains first: it takes no new requests, its
  in-flight ones finish, or after `drain_timeout` are ended;
- nothing is slept unless the whole set that makes room can be had; a drain no longer needed is
  called off; an operator's sleep and `idle_sleep` put a backend to sleep with no one waiting.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..routing.state import ASLEEP, AWAKE, FAILED, GOING_TO_SLEEP, HOLDS_MEMORY
from .budget import Budget

READY, LOADING, DOWN = "ready", "loading", "down"  # a candidate's process
KEEP_ALLOWANCE = 2 * 2**30  # what a sleeping vLLM may keep (CUDA context, graphs, allocator leftovers)


@dataclass(frozen=True)
class Candidate:
    """An on-demand backend as the policy sees it (times are monotonic seconds)."""

    name: str
    state: str
    process: str = READY  # ready: serving or asleep in its process; loading; down: no process or between restarts
    in_flight: int = 0
    wanted_since: float | None = None  # the oldest request, start or operator waiting for it to be awake
    wakeable: bool = True  # a wake can begin now
    awake_since: float | None = None
    used_since_wake: bool = False
    last_used: float | None = None
    min_awake: float = 0.0
    idle_sleep: float | None = None
    draining_since: float | None = None
    drain_timeout: float = 30.0
    sleep_asked: bool = False  # an operator asked for it to sleep
    retry_at: float | None = None  # failed: not before this


@dataclass(frozen=True)
class Wake:
    name: str


@dataclass(frozen=True)
class Drain:
    """Take no new requests; sleep once the in-flight ones are done."""

    name: str


@dataclass(frozen=True)
class Sleep:
    name: str
    evict: bool = False  # the drain ran out: end what is still in flight first


@dataclass(frozen=True)
class Undrain:
    name: str


@dataclass(frozen=True)
class Wait:
    until: float | None = None  # when something may change by the clock alone


Decision = Wake | Drain | Sleep | Undrain | Wait


def decide(candidates: list[Candidate], budget: Budget, now: float, max_swap_delay: float) -> Decision:
    by_name = {c.name: c for c in candidates}
    holding = [c.name for c in candidates if c.state in HOLDS_MEMORY]
    timers: list[float] = []
    wanted: list[str] = []  # victims, in the order they should go

    targets = sorted((c for c in candidates if c.wanted_since is not None and _sleeping(c, now)),
                     key=lambda c: (c.wanted_since, c.name))
    first = None
    for target in targets:
        if not target.wakeable:
            continue
        if not budget.over(holding, target.name):
            return Wake(target.name)
        first = first or target
    if first is not None:
        victims, until = victims_for(first, candidates, budget, holding, now, max_swap_delay)
        wanted += victims
        timers += until
    for c in candidates:
        if c.state not in (AWAKE, GOING_TO_SLEEP) or c.name in wanted:
            continue
        if c.sleep_asked:
            wanted.append(c.name)
        elif c.state == AWAKE and c.idle_sleep is not None and c.in_flight == 0 and c.wanted_since is None:
            since = c.last_used if c.last_used is not None else c.awake_since
            if since is not None and now >= since + c.idle_sleep:
                wanted.append(c.name)
            elif since is not None:
                timers.append(since + c.idle_sleep)

    for c in candidates:
        if c.state == GOING_TO_SLEEP and c.name not in wanted:
            return Undrain(c.name)
    for name in wanted:
        c = by_name[name]
        if c.process == LOADING:
            continue  # never end or sleep a process while it loads; it is ready soon
        if c.in_flight == 0:
            return Sleep(name)
        if c.state == AWAKE:
            return Drain(name)
        assert c.draining_since is not None
        deadline = c.draining_since + c.drain_timeout
        if now >= deadline:
            return Sleep(name, evict=True)
        timers.append(deadline)
    return Wait(min(timers) if timers else None)


def victims_for(target: Candidate, candidates: list[Candidate], budget: Budget, holding: list[str], now: float,
                max_swap_delay: float) -> tuple[list[str], list[float]]:
    """The backends to put to sleep so that `target` fits, least recently used first, and the
    times at which a larger choice opens up. Empty while the whole set cannot be had yet."""
    over = budget.over(holding, target.name)
    busy_allowed = target.wanted_since is not None and now >= target.wanted_since + max_swap_delay
    timers: list[float] = []
    if not busy_allowed and target.wanted_since is not None:
        timers.append(target.wanted_since + max_swap_delay)
    leaving, idle, busy = [], [], []
    for c in candidates:
        if c.name == target.name or c.state not in (AWAKE, GOING_TO_SLEEP):
            continue
        if not any(budget.share_on(c.name, device) for device in over):
            continue
        if c.state == GOING_TO_SLEEP:
            leaving.append(c)
            continue
        if c.process == LOADING:
            continue
        protected_until = c.awake_since + c.min_awake if c.used_since_wake and c.awake_since is not None else None
        if protected_until is not None and now < protected_until:
            timers.append(protected_until)
            continue
        if c.in_flight == 0:
            idle.append(c)
        elif busy_allowed:
            busy.append(c)
    order = leaving + sorted(idle, key=_recency) + sorted(busy, key=_recency)
    freed: dict[str, float] = {}
    chosen: list[str] = []
    for c in order:
        if all(freed.get(device, 0.0) >= need - 1e-9 for device, need in over.items()):
            break
        chosen.append(c.name)
        for device in over:
            freed[device] = freed.get(device, 0.0) + budget.share_on(c.name, device)
    if all(freed.get(device, 0.0) >= need - 1e-9 for device, need in over.items()):
        return chosen, timers
    return [c.name for c in leaving], timers  # not enough yet: only what already leaves goes on


def kept_memory(held: int, total: int, share: float) -> bool:
    """After a sleep: does the process still hold more than a sleeping vLLM should (its CUDA
    context and leftovers, up to `KEEP_ALLOWANCE` or a quarter of its share)? Then it did not
    give its memory back, and waking another backend beside it could run out of memory."""
    return held > max(KEEP_ALLOWANCE, 0.25 * share * total)


def _sleeping(c: Candidate, now: float) -> bool:
    return c.state == ASLEEP or (c.state == FAILED and (c.retry_at is None or now >= c.retry_at))


def _recency(c: Candidate) -> tuple[float, str]:
    last = c.last_used if c.last_used is not None else (c.awake_since or 0.0)
    return last, c.name


__all__ = ["DOWN", "KEEP_ALLOWANCE", "LOADING", "READY", "Candidate", "Decision", "Drain", "Sleep", "Undrain", "Wait",
           "Wake", "decide", "kept_memory", "victims_for"]
