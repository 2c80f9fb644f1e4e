"""Mapping NVML's processes onto the launched backends' process groups."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from vllm_gateway.gpu.ownership import process_group, process_name, split_by_owner


def test_processes_are_split_by_process_group() -> None:
    groups = {100: 100, 101: 100, 102: 100, 200: 200, 201: 200, 999: 1}
    ours, foreign = split_by_owner([(101, 6 * 2**30), (102, 2**20), (201, 17 * 2**30), (999, 3 * 2**30), (555, 10)],
                                   {"embed": 100, "guard": 200, "idle": 300}, groups.get)
    assert ours == {"embed": 6 * 2**30 + 2**20, "guard": 17 * 2**30, "idle": 0}
    assert foreign == [(999, 3 * 2**30), (555, 10)]  # another group, and a pid /proc does not know


def test_unknown_usage_counts_as_zero_but_keeps_the_owner() -> None:
    ours, foreign = split_by_owner([(7, None)], {"a": 7}, lambda pid: 7)
    assert ours == {"a": 0} and foreign == []


def test_process_group_from_proc_of_a_real_session_leader() -> None:
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"], start_new_session=True)
    try:
        assert process_group(child.pid) == child.pid  # its own group, as launch.py starts backends
        assert process_group(os.getpid()) == os.getpgid(0)
        assert process_name(child.pid).startswith("python")
    finally:
        child.kill()
        child.wait()


def test_a_gone_or_odd_pid_has_no_group(tmp_path: Path) -> None:
    assert process_group(2**22 + 12345) is None
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_bytes(b"7 (odd) name with ) paren) S 1 42 42")
    assert process_group(7, proc=tmp_path) == 42  # the command name may itself contain ")"
    assert process_name(8, proc=tmp_path) == "?"
