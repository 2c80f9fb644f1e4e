"""CPU time and memory of a process tree, read from /proc (Linux only).

The gateway's CPU cost per request is the change in utime+stime over a load run divided by the
requests answered; with `--workers N` uvicorn forks children, so the whole tree is summed.
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


def cpu_seconds(pids: list[int]) -> float:
    """utime + stime of the given processes, in seconds (reaped children are not included)."""
    total = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            total += int(fields[11]) + int(fields[12])  # fields 14 and 15 of proc(5), 0-based after the name
    return total / CLOCK_TICKS


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
        return cpu_seconds(self.pids())

    def split(self) -> tuple[float, float]:
        return cpu_split(self.pids())

    def rss(self) -> int:
        return rss_bytes(self.pids())
