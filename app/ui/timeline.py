"""Which backend was in which state over the last hour, restarts and swaps marked.

`Timeline.sample` is called once a second with the backends as `/status` shows them; it keeps
runs of one state (a change starts a new run) and marks, per backend, in bounded deques, so
memory stays bounded however often a backend flaps. It reads the status document only: it has no
hold on the parts that write the states.
"""

from __future__ import annotations

import collections
from typing import Any

HOUR = 3600.0
_MOST_RUNS = 3600  # one change a second for an hour
_MOST_MARKS = 1000


def shown_state(backend: dict[str, Any]) -> str:
    """The word the timeline draws: residency's (`awake`, `asleep`, ...) while the backend is
    ready and has one, else the backend's own state."""
    state = str(backend.get("state", "unknown"))
    residency = backend.get("residency")
    if state == "ready" and isinstance(residency, dict) and isinstance(residency.get("state"), str):
        return residency["state"]
    return state


class _Track:
    __slots__ = ("runs", "marks", "restarts", "swaps")

    def __init__(self) -> None:
        self.runs: collections.deque[list[Any]] = collections.deque(maxlen=_MOST_RUNS)  # [start, end, state]
        self.marks: collections.deque[tuple[float, str]] = collections.deque(maxlen=_MOST_MARKS)
        self.restarts: int | None = None
        self.swaps: int | None = None


class Timeline:
    __slots__ = ("tracks", "span")

    def __init__(self, span: float = HOUR) -> None:
        self.tracks: dict[str, _Track] = {}
        self.span = span

    def sample(self, backends: list[dict[str, Any]], now: float) -> None:
        for backend in backends:
            name = str(backend.get("name"))
            track = self.tracks.get(name)
            if track is None:
                track = self.tracks[name] = _Track()
            state = shown_state(backend)
            runs = track.runs
            if runs and runs[-1][2] == state:
                runs[-1][1] = now
            else:
                if runs:
                    runs[-1][1] = now
                runs.append([now, now, state])
            restarts = backend.get("restarts")
            if isinstance(restarts, int):
                if track.restarts is not None and restarts > track.restarts:
                    track.marks.append((now, "restart"))
                track.restarts = restarts
            swaps = _swaps(backend)
            if swaps is not None:
                if track.swaps is not None and swaps > track.swaps:
                    track.marks.append((now, "swap"))
                track.swaps = swaps
            while runs and runs[0][1] < now - self.span:
                runs.popleft()
            while track.marks and track.marks[0][0] < now - self.span:
                track.marks.popleft()

    def export(self, now: float) -> dict[str, Any]:
        since = now - self.span
        return {"since": round(since, 3), "until": round(now, 3), "backends": {
            name: {"runs": [[round(max(start, since), 3), round(end, 3), state] for start, end, state in track.runs],
                   "marks": [[round(at, 3), kind] for at, kind in track.marks]}
            for name, track in self.tracks.items()}}


def _swaps(backend: dict[str, Any]) -> int | None:
    """`residency.swaps` as a count (a number, or a mapping of counts by direction)."""
    residency = backend.get("residency")
    if not isinstance(residency, dict):
        return None
    swaps = residency.get("swaps")
    if isinstance(swaps, bool):
        return None
    if isinstance(swaps, int):
        return swaps
    if isinstance(swaps, dict):
        return sum(v for v in swaps.values() if isinstance(v, int) and not isinstance(v, bool))
    return None


__all__ = ["HOUR", "Timeline", "shown_state"]
