"""How one backend process is started and ended, below the supervisor's state machine.

- `command_line` / `environment`: the argv and environment a `launch:` section means (sleep mode's
  flag and dev routes for `residency: on_demand` with `swap: sleep`); `start_hint`: what a start
  failure's output means for the configuration;
- `spawn` / `signal_group` / `group_alive` / `end_group`: the process in its own process group,
  so ending it ends every child vLLM forks (API server, engine core, workers, resource tracker).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ..adapters.config import RUNTIME_LORA_ENV
from ..settings import KEEP_ALIVE_ENV, BackendConfig

PR_SET_PDEATHSIG = 1
DEV_MODE_ENV = "VLLM_SERVER_DEV_MODE"  # vLLM's /sleep, /wake_up, /is_sleeping, /collective_rpc routes
# vLLM's ModelConfig check (`current_platform.is_sleep_mode_available()`, false on its CPU build).
NO_SLEEP_MODE = "Sleep mode is not supported on current platform"
_PIPE_LIMIT = 65536  # the output relay reads in chunks of this size


def address(config: BackendConfig) -> tuple[str, int]:
    """The host and port the backend's process must bind: those of its (single) URL."""
    parts = urlsplit(config.all_urls[0])
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.hostname or "127.0.0.1", port


def substitute(text: str, config: BackendConfig) -> str:
    """Replace `{model}`, `{host}`, `{port}` and `{name}`; any other brace is left alone (JSON args)."""
    assert config.launch is not None
    host, port = address(config)
    values = {"{model}": config.launch.model, "{host}": host, "{port}": str(port), "{name}": config.name}
    for key, value in values.items():
        text = text.replace(key, value)
    return text


def command_line(config: BackendConfig) -> list[str]:
    """`command`, then the flags the gateway owns (only those whose fields are set), then `args`.

    `args` come last so a user's own flag wins: vLLM's argument parser keeps the last occurrence.
    """
    launch = config.launch
    assert launch is not None
    host, port = address(config)
    argv = [substitute(part, config) for part in launch.command]
    argv += ["--host", host, "--port", str(port)]
    if config.served_model_name:
        argv += ["--served-model-name", config.served_model_name]
    share = launch.gpu_memory_utilization
    if isinstance(share, float):  # `auto` is filled in by the plan before a launch (planner.plan.planned_backend)
        argv += ["--gpu-memory-utilization", f"{share:g}"]
    if launch.max_model_len is not None:
        argv += ["--max-model-len", str(launch.max_model_len)]
    if sleep_mode(config):
        argv.append("--enable-sleep-mode")
    argv += [substitute(part, config) for part in launch.args]
    return argv


def sleep_mode(config: BackendConfig) -> bool:
    """Whether this backend sleeps through vLLM's sleep mode (on demand, `swap: sleep`)."""
    return config.launch is not None and config.launch.on_demand and config.launch.swap == "sleep"


def start_hint(config: BackendConfig, output: str) -> str | None:
    """What to change when a failed start's output names a known cause retrying cannot fix."""
    if sleep_mode(config) and NO_SLEEP_MODE in output:
        return ("this vLLM build has no sleep mode (vLLM's CPU build has none; it needs CUDA or ROCm): "
                "use launch.swap: restart for this backend")
    return None


def environment(config: BackendConfig, base: dict[str, str] | None = None) -> dict[str, str]:
    """The gateway's environment plus `env`; Python output unbuffered so log lines arrive at once;
    the backend's keep-alive (`BackendConfig.effective_keep_alive`), which the gateway's connection
    pool for it relies on; vLLM's runtime LoRA routes when the gateway loads `adapters` itself."""
    assert config.launch is not None
    env = dict(os.environ if base is None else base)
    env.setdefault("PYTHONUNBUFFERED", "1")
    env.update({key: substitute(value, config) for key, value in config.launch.env.items()})
    env[KEEP_ALIVE_ENV] = str(config.effective_keep_alive)
    if config.adapters:
        env[RUNTIME_LORA_ENV] = "True"
    if sleep_mode(config):
        env[DEV_MODE_ENV] = "1"  # the sleep routes; the gateway never forwards them (not model routes)
    return env


def log_file_path(config: BackendConfig) -> Path | None:
    assert config.launch is not None
    if not config.launch.log_file:
        return None
    return Path(substitute(config.launch.log_file, config)).expanduser()


# -- the process and its group -------------------------------------------------------------------

def _parent_death_signal() -> Any:
    """A `preexec_fn` asking Linux to send SIGTERM to the child when the gateway dies.

    This is the safety net for a gateway killed with SIGKILL (or crashing) where no shutdown code
    runs: the backend's leader gets SIGTERM and, being vLLM, stops its own engine and workers.
    `setsid` (start_new_session) runs first in the child and does not clear the setting. The
    signal follows the thread that forked; the event loop thread, which lives as long as the
    supervisor. Elsewhere than Linux there is no such call and nothing is set.
    """
    if not sys.platform.startswith("linux"):
        return None
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        prctl = libc.prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def arm() -> None:  # runs in the child between fork and exec: no allocation-heavy work
        prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
        if os.getppid() != parent:  # the gateway died before the call took effect
            os._exit(1)

    return arm


async def spawn(argv: list[str], env: dict[str, str]) -> asyncio.subprocess.Process:
    """Start the process as the leader of a new session and process group (pgid == pid)."""
    return await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env=env,
        start_new_session=True,
        preexec_fn=_parent_death_signal(),
        limit=_PIPE_LIMIT,
    )


def signal_group(pgid: int, sig: int) -> bool:
    """Send `sig` to every process of the group; False when the group is already empty."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:  # a member we cannot signal; nothing more we can do about it
        return True
    return True


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of the group, read from /proc (in-memory, never blocks).

    `killpg(pgid, 0)` alone also counts zombies, which a container's init may never reap; a
    reaped-but-listed process would make every stop wait for its full timeout.
    """
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return []
    except PermissionError:
        pass
    proc = Path("/proc")
    if not proc.is_dir():
        return [pgid]
    members = []
    for entry in os.scandir(proc):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as stat:
                fields = stat.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after "pid (comm)": state, ppid, pgrp, ...
        if len(fields) > 2 and int(fields[2]) == pgid and fields[0] not in (b"Z", b"X"):
            members.append(int(entry.name))
    return members


def group_alive(pgid: int) -> bool:
    return bool(group_members(pgid))


async def end_group(pgid: int, exited: asyncio.Future[Any] | None, timeout: float, poll: float = 0.1) -> bool:
    """SIGTERM the whole group, SIGKILL whatever is left after `timeout` s. True if SIGKILL was needed."""
    loop = asyncio.get_running_loop()
    killed = False
    if group_alive(pgid):
        signal_group(pgid, signal.SIGTERM)
        deadline = loop.time() + timeout
        while group_alive(pgid) and loop.time() < deadline:
            await asyncio.sleep(poll)
        if group_alive(pgid):
            killed = True
            signal_group(pgid, signal.SIGKILL)
            deadline = loop.time() + 5.0
            while group_alive(pgid) and loop.time() < deadline:
                await asyncio.sleep(poll)
    if exited is not None and not exited.done():
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.shield(exited), 5.0)
    return killed
