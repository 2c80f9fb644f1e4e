"""Whose GPU memory is it: NVML's per-process list mapped onto the backends' process groups.

Every backend the gateway launches leads its own process group (launch.py: pgid == pid), and
vLLM's engine core and workers, the processes that actually hold GPU memory, inherit it. So a
pid belongs to a backend when its process group id equals that backend's pgid.
Caveat: inside a container without the host's PID namespace NVML reports host pids, which
/proc does not know; they show up as foreign.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from pathlib import Path


def process_group(pid: int, proc: Path = Path("/proc")) -> int | None:
    """The pgid of `pid` from /proc/<pid>/stat (in memory, never blocks), or None if it is gone."""
    try:
        raw = (proc / str(pid) / "stat").read_bytes()
    except OSError:
        return None
    fields = raw.rsplit(b")", 1)[-1].split()  # after "pid (comm)": state, ppid, pgrp, ...
    try:
        return int(fields[2])
    except (IndexError, ValueError):
        return None


def process_name(pid: int, proc: Path = Path("/proc")) -> str:
    try:
        return (proc / str(pid) / "comm").read_text().strip()
    except OSError:
        return "?"


def split_by_owner(processes: Iterable[tuple[int, int | None]], pgids: Mapping[str, int],
                   pgid_of: Callable[[int], int | None]) -> tuple[dict[str, int], list[tuple[int, int]]]:
    """({backend: bytes}, [(foreign pid, bytes)]) for one device. Pure: `pgid_of` is the /proc reader."""
    owner_of = {pgid: name for name, pgid in pgids.items()}
    ours: dict[str, int] = dict.fromkeys(pgids, 0)
    foreign: list[tuple[int, int]] = []
    for pid, used in processes:
        pgid = pgid_of(pid)
        name = owner_of.get(pgid) if pgid is not None else None
        if name is not None:
            ours[name] += used or 0
        else:
            foreign.append((pid, used or 0))
    return ours, foreign
