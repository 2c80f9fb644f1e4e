"""The directory prometheus-client's multiprocess mode shares between uvicorn workers.

prometheus-client decides at import time whether values live in memory or in files under
`PROMETHEUS_MULTIPROC_DIR`, so the variable must be set before the workers start (they inherit
it), and the directory must hold no files from an earlier run, or their counts would be summed in.
`serve` with several workers wraps uvicorn in `worker_metrics_dir()`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

ENV = "PROMETHEUS_MULTIPROC_DIR"


def clear_chosen_dir() -> Path | None:
    """Empty an operator-set `PROMETHEUS_MULTIPROC_DIR` of earlier runs' files (even with one
    worker, prometheus-client then keeps values there); returns it, or None when unset."""
    chosen = os.environ.get(ENV)
    if not chosen:
        return None
    path = Path(chosen)
    path.mkdir(parents=True, exist_ok=True)
    for stale in path.glob("*.db"):
        stale.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def worker_metrics_dir() -> Iterator[Path]:
    """Set `PROMETHEUS_MULTIPROC_DIR` to an empty directory for the workers' lifetime.

    A directory the operator chose (the variable already set, e.g. a tmpfs mount) is used, but
    its `*.db` files from earlier runs are deleted first and the directory is kept afterwards;
    otherwise a fresh temporary directory is created and removed at the end.
    """
    chosen = clear_chosen_dir()
    if chosen is not None:
        yield chosen
        return
    path = Path(tempfile.mkdtemp(prefix="vllm-gateway-metrics-"))
    os.environ[ENV] = str(path)
    try:
        yield path
    finally:
        os.environ.pop(ENV, None)
        shutil.rmtree(path, ignore_errors=True)


__all__ = ["ENV", "clear_chosen_dir", "worker_metrics_dir"]
