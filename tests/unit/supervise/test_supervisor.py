"""The supervisor's parts: argv/env building, output relay, process groups, the state machine.

Processes here are small real ones (`python -c`, `sh`), so process groups, signals and exit codes
are the operating system's, not mocks. The full launch path with simulated vLLM servers is in
tests/e2e/test_launch.py; real vLLM in tests/real_vllm/.
"""

from __future__ import annotations

import asyncio
import io
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.servers import running, simulator
from vllm_gateway.cli import main as cli_main
from vllm_gateway.metrics import GatewayMetrics
from vllm_gateway.routing.discovery import ModelDiscovery
from vllm_gateway.routing.health import HealthMonitor
from vllm_gateway.routing.registry import Registry
from vllm_gateway.routing.state import FAILED, READY, RESTARTING, STARTING, STOPPED, UNHEALTHY
from vllm_gateway.settings import ConfigError, Settings, load_settings
from vllm_gateway.supervise import process as launch
from vllm_gateway.supervise.output import OutputRelay
from vllm_gateway.supervise.policy import backoff, count_failure, describe_exit, gives_up, unhealthy_too_long
from vllm_gateway.supervise.supervisor import Supervisor

PY = sys.executable
ROOT = str(Path(__file__).resolve().parents[3])


def backend(name: str = "b", url: str = "http://127.0.0.1:8010", **launch_fields) -> dict:
    launch_fields.setdefault("model", f"org/{name}")
    return {"name": name, "url": url, "launch": launch_fields}


def config_of(**fields):
    return Settings(backends=[backend(**fields)]).backends[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# -- argv and environment --------------------------------------------------------------------------

def test_default_command_gets_the_flags_the_gateway_owns_then_args() -> None:
    config = Settings(backends=[{
        "name": "guard", "url": "http://127.0.0.1:8000", "models": ["guard-8b", "other"],
        "launch": {"model": "Qwen/Qwen3Guard-Gen-8B", "gpu_memory_utilization": 0.6, "max_model_len": 32768,
                   "args": ["--max-num-seqs", "512"]},
    }]).backends[0]
    assert launch.command_line(config) == [
        "vllm", "serve", "Qwen/Qwen3Guard-Gen-8B",
        "--host", "127.0.0.1", "--port", "8000",
        "--served-model-name", "guard-8b",
        "--gpu-memory-utilization", "0.6",
        "--max-model-len", "32768",
        "--max-num-seqs", "512",
    ]


def test_unset_fields_add_no_flags_and_placeholders_are_substituted() -> None:
    config = config_of(name="embed", url="http://localhost:8011", model="/models/tiny",
                       command=["python", "-m", "vllm.entrypoints.openai.api_server", "--model", "{model}"],
                       args=["--tag", "{name}@{host}:{port}", '--override-generation-config', '{"temperature": 0}'])
    assert launch.command_line(config) == [
        "python", "-m", "vllm.entrypoints.openai.api_server", "--model", "/models/tiny",
        "--host", "localhost", "--port", "8011", "--served-model-name", "/models/tiny",
        "--tag", "embed@localhost:8011", "--override-generation-config", '{"temperature": 0}',
    ]


def test_environment_adds_substituted_env_over_the_gateways() -> None:
    config = config_of(name="chat", env={"VLLM_PORT_HINT": "{port}", "HOME": "/elsewhere", "N": 3})
    env = launch.environment(config, base={"HOME": "/root", "PATH": "/bin"})
    assert env == {"HOME": "/elsewhere", "PATH": "/bin", "VLLM_PORT_HINT": "8010", "N": "3", "PYTHONUNBUFFERED": "1",
                   "VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "60"}


def test_environment_allows_runtime_lora_updating_only_when_the_gateway_loads_adapters() -> None:
    inherited = {"VLLM_ALLOW_RUNTIME_LORA_UPDATING": "0"}
    with_adapters = Settings(backends=[{**backend(args=["--enable-lora"]), "adapters": {"sql": "/a/sql"}}]).backends[0]
    assert launch.environment(with_adapters, base=inherited)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "True"
    assert launch.environment(config_of(), base=inherited)["VLLM_ALLOW_RUNTIME_LORA_UPDATING"] == "0"


def test_environment_sets_the_backends_keep_alive_over_an_inherited_one() -> None:
    """The gateway's pool for the backend expires idle connections a second before this."""
    inherited = {"VLLM_HTTP_TIMEOUT_KEEP_ALIVE": "5"}
    assert launch.environment(config_of(), base=inherited)["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "60"
    tuned = Settings(backends=[{**backend(), "keep_alive": 15}]).backends[0]
    assert launch.environment(tuned, base=inherited)["VLLM_HTTP_TIMEOUT_KEEP_ALIVE"] == "15"


def test_log_file_path_takes_placeholders() -> None:
    assert launch.log_file_path(config_of(name="embed", log_file="/var/log/{name}.log")) == Path("/var/log/embed.log")
    assert launch.log_file_path(config_of()) is None


# -- output relay ----------------------------------------------------------------------------------

def test_output_relay_prefixes_lines_keeps_a_tail_and_writes_the_log_file(tmp_path: Path) -> None:
    sink = io.StringIO()
    log_file = tmp_path / "logs" / "chat.log"
    relay = OutputRelay("chat", log_file, sink, keep=3)
    raw = b"INFO loading\r\nhalf a li" + b"ne\n\xff bad utf-8\nfirst\nsecond\nno newline at the end"

    async def feed() -> None:
        reader = asyncio.StreamReader()
        for start in range(0, len(raw), 7):  # arbitrary chunk borders
            reader.feed_data(raw[start:start + 7])
        reader.feed_eof()
        await relay.run(reader)

    asyncio.run(feed())
    assert sink.getvalue().splitlines() == [
        "[chat] INFO loading", "[chat] half a line", "[chat] \ufffd bad utf-8",
        "[chat] first", "[chat] second", "[chat] no newline at the end",
    ]
    assert relay.last_lines() == "first\nsecond\nno newline at the end"
    assert log_file.read_bytes() == raw


def test_output_relay_splits_a_line_longer_than_its_limit() -> None:
    sink = io.StringIO()
    relay = OutputRelay("x", None, sink)

    async def feed() -> None:
        reader = asyncio.StreamReader()
        reader.feed_data(b"a" * 40000 + b"\nend\n")
        reader.feed_eof()
        await relay.run(reader)

    asyncio.run(feed())
    lines = sink.getvalue().splitlines()
    assert "".join(line.removeprefix("[x] ") for line in lines[:-1]) == "a" * 40000
    assert lines[-1] == "[x] end"


# -- small rules -----------------------------------------------------------------------------------

def test_backoff_doubles_from_the_initial_delay_and_is_capped() -> None:
    assert [backoff(n, 1.0, 60.0) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff(1000, 0.5, 5.0) == 5.0


def test_unhealthy_restart_counts_from_the_first_failed_check_and_0_turns_it_off() -> None:
    assert unhealthy_too_long(None, 1000.0, 60) is None            # healthy
    assert unhealthy_too_long(950.0, 1000.0, 60) is None           # failing for 50 s of 60
    assert unhealthy_too_long(938.0, 1000.0, 60) == 62.0
    assert unhealthy_too_long(0.0, 1000.0, 0) is None              # 0: never restart for /health


def test_consecutive_failures_restart_after_a_long_healthy_run_and_the_cap_gives_up() -> None:
    assert count_failure(0, None, 60) == 1                          # failed while loading
    assert count_failure(4, None, 60) == 5
    assert count_failure(4, 59.9, 60) == 5                          # not healthy long enough
    assert count_failure(4, 60.0, 60) == 1                          # ran healthily for the cap: start over
    assert [gives_up(n, 2) for n in (1, 2, 3)] == [False, False, True]
    assert not gives_up(10_000, 0)                                  # 0: never give up


def test_supervision_keys_have_defaults_and_errors_name_them(tmp_path: Path) -> None:
    assert (config_of().launch.unhealthy_restart_after, config_of().launch.max_restarts) == (60.0, 0)
    path = tmp_path / "gateway.yaml"
    path.write_text("backends:\n  - {name: b, url: 'http://127.0.0.1:8010', launch: "
                    "{model: m, unhealthy_restart_after: -1, max_restarts: 1.5}}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "backends[0].launch.unhealthy_restart_after: Input should be greater than or equal to 0" in str(caught.value)
    assert "backends[0].launch.max_restarts: Input should be a valid integer" in str(caught.value)
    path.write_text("backends:\n  - {name: b, url: 'http://127.0.0.1:8010', launch: {model: m, max_restarts: -1}}\n")
    with pytest.raises(ConfigError, match=r"backends\[0\]\.launch\.max_restarts: Input should be greater"):
        load_settings(path)


def test_exit_descriptions_name_signals() -> None:
    assert describe_exit(-9) == "signal SIGKILL (exit code -9)"
    assert describe_exit(3) == "exit code 3"


def test_memory_budget_is_refused_naming_each_share(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "gpu: {memory_budget: 0.9}\nbackends:\n"
        "  - {name: embed, url: 'http://127.0.0.1:8010', launch: {model: e, gpu_memory_utilization: 0.35}}\n"
        "  - {name: guard, url: 'http://127.0.0.1:8000', launch: {model: g, gpu_memory_utilization: 0.6}}\n"
    )
    with pytest.raises(ConfigError, match=r"gpu.memory_budget.*0\.95 \(embed=0\.35, guard=0\.6\).*0\.9"):
        load_settings(path)
    assert cli_main(["check-config", "--config", str(path)]) == 2
    assert "embed=0.35, guard=0.6" in capsys.readouterr().err


@pytest.mark.parametrize(("shares", "warned"), [
    ([0.15, 0.60], False),           # the L40S example: 0.75 for two
    ([0.30, 0.55], True),            # 0.85 > 0.8 for two
    ([0.25, 0.25, 0.25], False),     # 0.75 for three
    ([0.25, 0.25, 0.26], True),      # 0.76 > 0.75 for three or more
    ([0.85], False),                 # a single instance has no neighbour to squeeze
])
def test_memory_warning_thresholds(shares: list[float], warned: bool) -> None:
    settings = Settings(host="127.0.0.1", backends=[
        backend(f"b{i}", f"http://127.0.0.1:{8000 + i}", gpu_memory_utilization=share) for i, share in enumerate(shares)
    ])
    assert any(note.startswith("gpu:") for note in settings.warnings()) is warned


def test_several_workers_cannot_launch_backends() -> None:
    with pytest.raises(ValueError, match="workers: 2 gateway workers cannot launch backends"):
        Settings(workers=2, backends=[backend()])
    Settings(workers=2, backends=[{"name": "ext", "url": "http://127.0.0.1:8000"}])  # external: fine


# -- process groups --------------------------------------------------------------------------------

def _start_group(script: str) -> subprocess.Popen:
    proc = subprocess.Popen(["sh", "-c", script], start_new_session=True, stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "up"  # children exist before we look
    return proc


def test_end_group_ends_every_member_not_only_the_leader() -> None:
    proc = _start_group("sleep 60 & sleep 60 & echo up; wait")
    members = launch.group_members(proc.pid)
    assert len(members) == 3
    killed = asyncio.run(launch.end_group(proc.pid, None, timeout=5))
    proc.communicate(timeout=5)
    assert not killed
    assert launch.group_members(proc.pid) == []
    assert all(not os.path.exists(f"/proc/{pid}") or _zombie(pid) for pid in members)


def test_end_group_kills_what_ignores_sigterm() -> None:
    proc = _start_group("trap '' TERM; sleep 60 & echo up; wait; wait")
    killed = asyncio.run(launch.end_group(proc.pid, None, timeout=0.3))
    proc.communicate(timeout=5)
    assert killed
    assert launch.group_members(proc.pid) == []


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


# -- the state machine, with real processes ---------------------------------------------------------

def supervise(backends: list[dict], until: Callable[[Registry, GatewayMetrics], bool], timeout: float = 15.0,
              after: Callable[[Registry], Any] | None = None) -> tuple[Registry, GatewayMetrics, str]:
    """Run a supervisor until `until` holds, stop it, return what it left behind."""
    sink = io.StringIO()

    async def scenario() -> tuple[Registry, GatewayMetrics]:
        registry = Registry(Settings(backends=backends))
        metrics = GatewayMetrics()
        supervisor = Supervisor(registry, ModelDiscovery(registry), metrics, probe_interval=0.05, sink=sink)
        assert all(b.state == STARTING for b in registry.backends.values())
        supervisor.start()
        try:
            deadline = time.monotonic() + timeout
            while not until(registry, metrics):
                assert time.monotonic() < deadline, f"condition not reached; states: {_states(registry)}"
                await asyncio.sleep(0.02)
            if after:
                await after(registry)
        finally:
            await supervisor.stop()
            await registry.aclose()
        return registry, metrics

    registry, metrics = asyncio.run(scenario())
    return registry, metrics, sink.getvalue()


def _states(registry: Registry) -> dict:
    return {b.name: (b.state, b.last_error) for b in registry.backends.values()}


def _restarts(metrics: GatewayMetrics, name: str) -> float:
    return metrics.registry.get_sample_value("gateway_backend_restarts_total", {"backend": name}) or 0.0


def test_a_process_that_exits_while_loading_fails_fast_with_its_output_and_is_retried() -> None:
    code = "import sys; print('loading weights'); print('CUDA out of memory', file=sys.stderr); sys.exit(3)"
    pids: list[int] = []

    def seen(registry: Registry, metrics: GatewayMetrics) -> bool:
        b = registry.backends["b"]
        if b.pid and b.pid not in pids:
            pids.append(b.pid)
        return b.restarts >= 2 and b.state == FAILED

    registry, metrics, output = supervise(
        [backend(url=f"http://127.0.0.1:{free_port()}", command=[PY, "-c", code], restart_backoff_initial=0.05)], seen)
    b = registry.backends["b"]
    assert b.state == STOPPED
    assert b.last_exit_code == 3
    assert "exited with exit code 3 while loading" in b.last_error
    assert b.last_error.endswith("last output:\nloading weights\nCUDA out of memory")
    assert _restarts(metrics, "b") == b.restarts >= 2
    assert "[b] CUDA out of memory" in output
    assert len(pids) >= 2 and not any(launch.group_alive(pid) for pid in pids)


def test_a_missing_program_fails_for_good() -> None:
    registry, metrics, _ = supervise(
        [backend(command=["/nonexistent/vllm", "serve"])], lambda r, m: r.backends["b"].state == FAILED)
    b = registry.backends["b"]
    assert b.state == FAILED and b.restarts == 0
    assert "no such program" in b.last_error and "launch.command" in b.last_error


def test_ready_timeout_ends_the_process_and_says_which_setting() -> None:
    code = "import time; print('still loading', flush=True); time.sleep(60)"
    registry, _, _ = supervise(
        [backend(url=f"http://127.0.0.1:{free_port()}", command=[PY, "-c", code], ready_timeout=0.5,
                 restart_backoff_initial=30)],
        lambda r, m: r.backends["b"].state == FAILED)
    b = registry.backends["b"]
    assert "within 0.5 s (launch.ready_timeout)" in b.last_error and "still loading" in b.last_error
    assert b.pid is None  # ended before the backoff wait


def test_a_port_already_in_use_is_not_started_twice() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        port = sock.getsockname()[1]
        registry, _, _ = supervise(
            [backend(url=f"http://127.0.0.1:{port}", command=[PY, "-c", "print('never run')"], restart_backoff_initial=30)],
            lambda r, m: r.backends["b"].state == FAILED)
    b = registry.backends["b"]
    assert "already accepts connections" in b.last_error and b.last_exit_code is None


def test_only_one_backend_loads_at_a_time_and_stop_ends_every_group() -> None:
    # Neither ever becomes ready: the second must not start while the first is loading.
    code = "import time; time.sleep(60)"
    pids: dict[str, int] = {}

    def first_loading(registry: Registry, metrics: GatewayMetrics) -> bool:
        for b in registry.backends.values():
            if b.pid:
                pids[b.name] = b.pid
        return "one" in pids

    async def check(registry: Registry) -> None:
        await asyncio.sleep(0.5)  # ample time for a second start, were it allowed
        assert registry.backends["two"].pid is None and registry.backends["two"].state == STARTING

    registry, _, _ = supervise(
        [backend("one", f"http://127.0.0.1:{free_port()}", command=[PY, "-c", code]),
         backend("two", f"http://127.0.0.1:{free_port()}", command=[PY, "-c", code])],
        first_loading, after=check)
    assert [b.state for b in registry.backends.values()] == [STOPPED, STOPPED]
    assert not launch.group_alive(pids["one"])


def test_stop_at_any_early_point_leaves_no_process() -> None:
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    code = f"import time; time.sleep(60)  # {marker}"

    async def scenario(yields: int | None) -> int | None:
        registry = Registry(Settings(backends=[backend(url=f"http://127.0.0.1:{free_port()}", command=[PY, "-c", code])]))
        supervisor = Supervisor(registry, ModelDiscovery(registry), GatewayMetrics(), sink=io.StringIO())
        supervisor.start()
        b = registry.backends["b"]
        if yields is None:  # until the process exists
            while b.pid is None:
                await asyncio.sleep(0.01)
        else:  # before, during or just after the spawn
            for _ in range(yields):
                await asyncio.sleep(0)
        pid = b.pid
        await supervisor.stop()
        await registry.aclose()
        return pid

    for yields in (0, 1, 3, 10, 30, None):
        asyncio.run(scenario(yields))
    assert _processes_with(marker) == []
    assert asyncio.run(scenario(None)) is not None  # the last case did start a process
    assert _processes_with(marker) == []


def _processes_with(text: str) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            try:
                if text.encode() in (entry / "cmdline").read_bytes() and not _zombie(int(entry.name)):
                    found.append(int(entry.name))
            except OSError:
                pass
    return found


def test_health_checks_leave_supervised_states_alone() -> None:
    async def scenario() -> None:
        registry = Registry(Settings(backends=[backend(url=f"http://127.0.0.1:{free_port()}")]))
        b = registry.backends["b"]
        monitor = HealthMonitor(registry, ModelDiscovery(registry), registry.settings)
        lifecycle = b.lifecycle  # what the supervisor writes
        moves = {STARTING: lambda: lifecycle.starting(True), RESTARTING: lambda: lifecycle.restarting("exited"),
                 FAILED: lambda: lifecycle.failed("exited"), STOPPED: lifecycle.stopped}
        for state in (STARTING, RESTARTING, FAILED, STOPPED):
            moves[state]()
            assert await monitor.check(b) is False
            assert b.state == state
        lifecycle.ready()
        assert await monitor.check(b) is False  # nothing listens there
        await registry.aclose()

    asyncio.run(scenario())


def test_check_config_shows_the_exact_command_and_the_memory_warning(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "gateway.yaml"
    path.write_text(
        "host: 127.0.0.1\nbackends:\n"
        "  - {name: embed, url: 'http://127.0.0.1:8010', launch: {model: Qwen/Qwen3-Embedding-0.6B, gpu_memory_utilization: 0.3}}\n"
        "  - {name: guard, url: 'http://127.0.0.1:8000', launch: {model: Qwen/Qwen3Guard-Gen-8B, gpu_memory_utilization: 0.55,\n"
        "                                                         args: [--max-num-seqs, '64']}}\n"
    )
    assert cli_main(["check-config", "--config", str(path)]) == 0
    out = capsys.readouterr().out
    assert ("launch:  vllm serve Qwen/Qwen3Guard-Gen-8B --host 127.0.0.1 --port 8000 --served-model-name "
            "Qwen/Qwen3Guard-Gen-8B --gpu-memory-utilization 0.55 --max-num-seqs 64 (gpu_memory_utilization 0.55)") in out
    assert "GPU memory: 0.85 of budget 0.9" in out
    assert "warning: gpu: 2 co-located vLLM instances use 0.85 of GPU memory" in out


# -- giving up, and restarting a process whose /health keeps failing ---------------------------------

def test_max_restarts_gives_up_leaving_the_backend_failed_with_what_to_do() -> None:
    code = "import sys; print('unknown flag --bad'); sys.exit(3)"
    registry, metrics, _ = supervise(
        [backend(url=f"http://127.0.0.1:{free_port()}", command=[PY, "-c", code], restart_backoff_initial=0.01,
                 max_restarts=2)],
        lambda r, m: "gave up" in (r.backends["b"].last_error or ""))
    b = registry.backends["b"]
    assert b.state == FAILED  # still after stop: the task had ended by itself
    assert b.restarts == 2 and _restarts(metrics, "b") == 2
    assert b.last_error.startswith("gave up after 3 consecutive failures (launch.max_restarts is 2)")
    assert "fix the cause, then restart the gateway" in b.last_error
    assert re.search(r"Last failure: exited with exit code 3 while loading \(pid \d+\); last output:\n"
                     r"unknown flag --bad$", b.last_error)
    assert b.pid is None and b.last_exit_code == 3


def _sim_command() -> dict:
    return {"command": [PY, "-m", "vllm_gateway", "simulate", "--model", "{model}"], "env": {"PYTHONPATH": ROOT}}


def test_a_ready_process_whose_health_checks_keep_failing_is_ended_and_restarted() -> None:
    seen: dict[str, Any] = {}

    async def break_health(registry: Registry) -> None:
        b = registry.backends["b"]
        seen["pid"] = b.pid
        async with httpx.AsyncClient(trust_env=False) as client:
            answer = await client.post(f"{b.upstreams[0].url}/_sim/health", json={"status": 503}, timeout=5)
            assert answer.status_code == 200
        assert await HealthMonitor(registry, ModelDiscovery(registry), registry.settings).check(b) is False  # what the health monitor does
        assert b.state == UNHEALTHY and b.health_failing_since is not None
        b.answered()  # a proxied response in between does not make /health count as healthy
        assert b.state == READY and b.health_failing_since is not None
        deadline = time.monotonic() + 10
        while b.state != RESTARTING:
            assert time.monotonic() < deadline, _states(registry)
            await asyncio.sleep(0.02)
        seen["error"] = b.last_error
        while b.pid is not None or launch.group_alive(seen["pid"]):  # ended before the backoff wait
            assert time.monotonic() < deadline, _states(registry)
            await asyncio.sleep(0.02)

    registry, metrics, output = supervise(
        [backend(url=f"http://127.0.0.1:{free_port()}", unhealthy_restart_after=0.3, restart_backoff_initial=30,
                 **_sim_command())],
        lambda r, m: r.backends["b"].state == READY, timeout=30, after=break_health)
    assert re.match(r"restarted: /health failed for [\d.]+ s \(last: health check answered 503\); "
                    r"launch.unhealthy_restart_after is 0.3 s; last output:\n", seen["error"])
    assert "simulated vLLM server" in seen["error"]  # the process's last output comes with it
    assert not launch.group_alive(seen["pid"])
    assert registry.backends["b"].restarts == 0  # still in its 30 s backoff when stopped


def test_health_checks_alone_decide_since_when_a_backend_fails() -> None:
    sim = simulator(["m"])

    async def scenario(url: str) -> None:
        registry = Registry(Settings(backends=[{"name": "x", "url": url}]))
        monitor = HealthMonitor(registry, ModelDiscovery(registry), registry.settings)
        b = registry.backends["x"]
        try:
            assert await monitor.check(b) and b.health_failing_since is None
            sim.state.health_status = 500
            assert not await monitor.check(b)
            since = b.health_failing_since
            assert since is not None and b.last_health_error == "health check answered 500"
            sim.state.health_status = 503
            assert not await monitor.check(b)
            assert b.health_failing_since == since and b.last_health_error == "health check answered 503"
            sim.state.health_status = 200
            assert await monitor.check(b)
            assert b.health_failing_since is None and b.last_health_error is None
        finally:
            await registry.aclose()

    with running(sim) as server:
        asyncio.run(scenario(server.url))
