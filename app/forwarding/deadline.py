"""Watchdogs: the timeouts of every in-flight request behind one loop timer.

A forwarded request needs a bound on each phase (response head, whole body, every gap in a
stream, the total). `asyncio.timeout()` costs a loop timer per use and re-arms it on every
`reschedule`; under uvloop a timer is a libuv handle allocated, started, stopped and freed each
time, per request and once more per relayed stream chunk (bench/NOTES.md section 6, rows 1-2).
Instead:

- each request has a `Watchdog` with a `deadline`; moving it later only stores the new value;
- `Deadlines` keeps the watchdogs' deadlines in a heap behind a single loop timer, armed at the
  earliest one. A request pushes one heap entry (its deadline, usually later than the armed
  timer's, so nothing is re-armed) and, when done, leaves it behind as stale;
- when the timer fires, entries whose watchdog moved on are pushed again at the new deadline or
  dropped when stopped; the heap is compacted when stale entries outnumber live ones, so it stays
  the size of what is in flight.

On expiry the watchdog cancels its task, as asyncio.timeout does, and sets `fired`, so the code
that catches the CancelledError can tell a timeout from a client that left (`forwarding.exchange` takes
the cancellation back with `task.uncancel()`).
"""

from __future__ import annotations

import asyncio
import heapq
import itertools

_NEVER = float("inf")
_SLACK = 0.001  # loop timers may fire up to a millisecond early (libuv rounds to milliseconds)


class Deadlines:
    """The heap and the one timer, for one event loop."""

    __slots__ = ("loop", "_heap", "_order", "_handle", "_armed_at", "active")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._heap: list[tuple[float, int, Watchdog]] = []
        self._order = itertools.count()  # ties never compare watchdogs
        self._handle: asyncio.TimerHandle | None = None
        self._armed_at = _NEVER
        self.active = 0  # watchdogs with a deadline

    def watchdog(self, task: asyncio.Task) -> Watchdog:
        return Watchdog(self, task)

    def _push(self, when: float, dog: Watchdog) -> None:
        heap = self._heap
        if len(heap) > 2 * self.active + 1024:
            self._compact()
        heapq.heappush(heap, (when, next(self._order), dog))
        if when < self._armed_at:
            self._arm(when)

    def _arm(self, when: float) -> None:
        if self._handle is not None:
            self._handle.cancel()
        self._armed_at = when
        self._handle = self.loop.call_at(when, self._fire)

    def _fire(self) -> None:
        self._handle = None
        self._armed_at = _NEVER
        heap = self._heap
        due = self.loop.time() + _SLACK
        while heap and heap[0][0] <= due:
            when, _, dog = heapq.heappop(heap)
            if when != dog._entry:
                continue  # superseded by an earlier entry of the same watchdog
            dog._entry = _NEVER
            if dog.deadline == _NEVER:
                continue  # stopped
            if dog.deadline > due:
                dog._entry = dog.deadline  # moved later meanwhile: wait on
                heapq.heappush(heap, (dog.deadline, next(self._order), dog))
                continue
            dog._expire()
        if heap:
            self._arm(heap[0][0])

    def _compact(self) -> None:
        live = []
        for entry in self._heap:
            dog = entry[2]
            if entry[0] == dog._entry:
                if dog.deadline == _NEVER:
                    dog._entry = _NEVER
                else:
                    live.append(entry)
        heapq.heapify(live)
        self._heap = live


class Watchdog:
    """Cancels `task` once `deadline` (loop time) passes, unless moved or stopped first."""

    __slots__ = ("_deadlines", "_task", "deadline", "_entry", "fired")

    def __init__(self, deadlines: Deadlines, task: asyncio.Task) -> None:
        self._deadlines, self._task = deadlines, task
        self.deadline = _NEVER
        self._entry = _NEVER  # the deadline of this watchdog's live heap entry
        self.fired = False

    def move(self, when: float) -> None:
        """Expire at `when` instead: a store when later than the entry in the heap, else a push."""
        if self.deadline == _NEVER:
            self._deadlines.active += 1
        self.deadline = when
        if when < self._entry:
            self._entry = when
            self._deadlines._push(when, self)

    def stop(self) -> None:
        if self.deadline != _NEVER:
            self.deadline = _NEVER
            self._deadlines.active -= 1

    def _expire(self) -> None:
        self.deadline = _NEVER
        self._deadlines.active -= 1
        self.fired = True
        self._task.cancel()
