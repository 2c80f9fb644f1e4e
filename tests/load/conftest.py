"""Fixtures for the load tests: real gateway and simulator processes (see `processes.py`).

In-thread servers (tests/servers.py) share the test process's GIL with the load client; here the
gateway runs as `python -m vllm_gateway serve` and each backend as `python -m vllm_gateway simulate`, so the
figures are those of one gateway process.

Figures the tests measure are printed (visible with `pytest -s`) and also collected into a
"load figures" section of the terminal summary, so a plain `make test` (`pytest -ra`) shows them.
"""

from __future__ import annotations

import resource
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.load.processes import Service, gateway_process, raise_fd_limit, simulator_process

_FIGURES = pytest.StashKey[list]()


# -- figures in the terminal summary ----------------------------------------------------------------

@pytest.fixture
def figures(request: pytest.FixtureRequest):
    """`figures("line")` prints a measured figure and keeps it for the terminal summary."""
    lines = request.config.stash.setdefault(_FIGURES, [])

    def record(line: str) -> None:
        line = f"{request.node.name}: {line}"
        print(line, flush=True)
        lines.append(line)

    return record


def pytest_terminal_summary(terminalreporter, exitstatus, config) -> None:
    lines = config.stash.get(_FIGURES, [])
    if lines:
        terminalreporter.write_sep("-", "load figures")
        for line in lines:
            terminalreporter.write_line(line)


@pytest.fixture(scope="module")
def raised_fd_limit() -> Iterator[None]:
    """The load client holds thousands of sockets; lift the soft limit for this module only."""
    before = resource.getrlimit(resource.RLIMIT_NOFILE)
    raise_fd_limit()
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, before)


@pytest.fixture(scope="module")
def load_sims(tmp_path_factory: pytest.TempPathFactory, raised_fd_limit: None) -> Iterator[list[Service]]:
    """Two simulator processes (models sim-a and sim-b), tokens paced at 5 ms as real streams are."""
    tmp = tmp_path_factory.mktemp("sims")
    with simulator_process(tmp, "sim-a") as sim_a, simulator_process(tmp, "sim-b") as sim_b:
        yield [sim_a, sim_b]


@pytest.fixture
def load_stack(load_sims: list[Service], tmp_path: Path) -> Iterator[tuple[Service, list[Service]]]:
    """A fresh gateway process per test in front of the two simulators: (gateway, sims).

    Fresh, so that one test's high-water mark of memory (2,000 streams at once) cannot hide
    another's leak inside heap the allocator already holds. Health checks every 5 s (the default)
    keep the gateway's own background traffic small next to the load.
    """
    backends = [{"name": "a", "url": load_sims[0].url, "models": ["sim-a"]},
                {"name": "b", "url": load_sims[1].url, "models": ["sim-b"]}]
    with gateway_process(tmp_path, backends) as gateway:
        yield gateway, load_sims
