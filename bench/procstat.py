"""CPU time and memory of a process tree, read from /proc (Linux only).

The gateway's CPU cost per request is the change in its CPU time over a load run divided by the
requests answered; with `--workers N` uvicorn forks children, so the whole tree is summed. The
total comes from the scheduler's nanosecond run time (`schedstat`): utime and stime count 10 ms
clock ticks, ±20 µs per stream over a 512-stream run, coarser than the changes being measured;
they still give the user/system split.
"""

from __future__ import annotations

import os

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def _stat_fields(pid: int) -> list[str] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            raw = handle.read().decode()
    except OSError:
        return None
    # The command name is in parentheses and may hold spaces: split after its closing one.
    return raw[raw.rindex(")") + 2 :].split()


def tree(pid: int) -> list[int]:
    """`pid` and all its descendants alive now."""
    parents: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is not None:
            parents.setdefault(int(fields[1]), []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(parents.get(current, ()))
    return found


def run_seconds(pids: list[int]) -> float:
    """CPU time of the given processes (all their threads) from the scheduler, in seconds."""
    total = 0
    for pid in pids:
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for task in tasks:
            try:
                with open(f"/proc/{pid}/task/{task}/schedstat", "rb") as handle:
                    total += int(handle.read().split()[0])
            except (OSError, ValueError, IndexError):
                pass
    return total / 1e9


def cpu_split(pids: list[int]) -> tuple[float, float]:
    """(user, system) seconds of the given processes."""
    user = system = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            user += int(fields[11])
            system += int(fields[12])
    return user / CLOCK_TICKS, system / CLOCK_TICKS


def rss_bytes(pids: list[int]) -> int:
    """Resident set size summed over the given processes."""
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm", "rb") as handle:
                total += int(handle.read().split()[1]) * PAGE_SIZE
        except OSError:
            pass
    return total


class TreeMeter:
    """Samples CPU and RSS of a process tree; the tree is re-read on each sample (workers may respawn)."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def pids(self) -> list[int]:
        return tree(self.pid)

    def cpu(self) -> float:
        return run_seconds(self.pids())

    def sample(self) -> tuple[float, float, float]:
        """(run time, user, system) in seconds: the first precise, the other two in clock ticks."""
        pids = self.pids()
        return (run_seconds(pids), *cpu_split(pids))

    def rss(self) -> int:
        return rss_bytes(self.pids())
