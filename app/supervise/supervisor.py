"""Launching, readiness, restart and stop of the vLLM processes of backends that have `launch:`.

One asyncio task owns each launched backend for the gateway's whole life (`Unit.run`): it starts
the process, waits for `GET /health` 200, optionally warms it up, then waits for it to exit and
starts it again with capped exponential backoff. A process that keeps running while the registry's
health checks have failed for `launch.unhealthy_restart_after` seconds (vLLM's API server outlives
a dead engine and answers /health with 503) is ended and started again the same way. After more
than `launch.max_restarts` failures in a row (when set) the task gives up and leaves the backend
`failed`. Its state is the backend's `Lifecycle` (`routing.state`), which this module alone writes
(`/status` shows it; the forwarder answers 503 + Retry-After while it is not routable).

Only one backend loads at a time (`Supervisor.loading`, a first-come first-served turn taken in
file order, `supervise.turn`): vLLM instances that profile GPU memory at the same time on one GPU
mis-size their KV caches or fail to start (vLLM issues 14376 and 55827). A restart waits for that
turn too, and so do the residency manager's sleeps and wakes.

An operator may ask for a restart (`Unit.request_restart`, `POST /admin/backends/{name}/restart`):
the process is ended and started at once, with no backoff and no failure counted.

An on-demand backend (`launch.residency: on_demand`) is started only once the residency manager
admitted it (`supervise.residence`); the manager may park its unit (end the process on purpose:
no failure, no backoff) and unpark it (start it again). `swap: restart` units start parked. A
process that ends while its backend is not awake is parked too instead of restarted.

Stopping cancels the tasks; each task's `finally` ends its process group (SIGTERM, then SIGKILL
after `stop_timeout`), so no path out of a task leaves a process behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import signal
import time
from collections.abc import Callable
from typing import IO, Any

from ..gpu.free_memory import check_free_memory
from ..gpu.telemetry import GpuTelemetry
from ..metrics import GatewayMetrics
from ..planner.plan import BackendPlan, Plan, planned_backend
from ..routing.backend import Backend
from ..routing.discovery import ModelDiscovery
from ..routing.health import health_error
from ..routing.registry import Registry
from ..routing.state import Lifecycle
from ..settings import BackendConfig
from . import process as launch
from .output import OutputRelay
from .policy import backoff, count_failure, describe_exit, gives_up, unhealthy_too_long
from .residence import Parking, Residence
from .turn import LoadingTurn
from .warmup import warm_up

log = logging.getLogger("vllm_gateway.supervisor")
EXIT_OUTPUT_GRACE = 0.2  # seconds for a dead process's last output to pass through the relay


class RestartRefused(Exception):
    """An operator's restart that cannot be done now; the message says why and what to do."""


class StartFailed(Exception):
    """One attempt to bring the process up failed; `permanent` means retrying cannot help."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.permanent = permanent


class _Parked(Exception):
    """The residency manager asked for the process to be down; not a failure."""


class Supervisor:
    def __init__(self, registry: Registry, discovery: ModelDiscovery, metrics: GatewayMetrics, *,
                 plan: Plan | None = None, telemetry: GpuTelemetry | None = None, probe_interval: float = 0.5,
                 sink: IO[str] | None = None, output_tap: Callable[[str, list[str]], None] | None = None,
                 loading: LoadingTurn | None = None, residence: Residence | None = None) -> None:
        self.registry = registry
        self.discovery = discovery
        self.metrics = metrics
        self.plans: dict[str, BackendPlan] = {b.name: b for b in plan.backends} if plan is not None else {}
        self.telemetry = telemetry  # the GPUs, when there are: memory is checked before each launch
        self.pgids: dict[str, int] = {}  # each running backend's process group, for the GPU telemetry
        self.probe_interval = probe_interval
        self.sink = sink
        self.output_tap = output_tap  # also given each line the processes print (the operator page's logs)
        self.stopping = False
        # A launched backend's lifecycle starts as `starting`: not routable, not probed.
        self.units = [Unit(self, b) for b in registry.launched]
        self.loading = loading if loading is not None else LoadingTurn()  # shared with the residency manager
        self.residence = residence
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        """One task per backend, created in file order; the loading lock keeps that order."""
        for unit in self.units:
            self.tasks.append(self._task(unit, first=True))

    def _task(self, unit: Unit, first: bool) -> asyncio.Task[None]:
        unit.task = asyncio.create_task(unit.run(first), name=f"supervise-{unit.backend.name}")
        return unit.task

    def unit(self, name: str) -> Unit | None:
        return next((u for u in self.units if u.name == name), None)

    async def stop(self) -> None:
        """End every process group (all at once) and wait until they are gone."""
        self.stopping = True
        for task in self.tasks:
            task.cancel()
        results = await asyncio.gather(*self.tasks, return_exceptions=True)
        for unit, result in zip(self.units, results, strict=False):
            if isinstance(result, BaseException) and not isinstance(result, asyncio.CancelledError):
                log.error("supervising backend %r failed: %r", unit.backend.name, result)
        self.tasks.clear()
        self.kill_now()

    def kill_now(self) -> None:
        """Last resort, synchronous: SIGKILL any group still alive (the event loop may be gone)."""
        for unit in self.units:
            if unit.pgid is not None and launch.signal_group(unit.pgid, signal.SIGKILL):
                log.warning("backend %r: killed what was left of process group %d", unit.backend.name, unit.pgid)
            unit.pgid = None


class Unit:
    """One supervised backend process: the task that owns it and what it remembers."""

    def __init__(self, supervisor: Supervisor, backend: Backend) -> None:
        assert backend.lifecycle is not None and backend.config.launch is not None
        self.supervisor = supervisor
        self.backend = backend
        self.lifecycle: Lifecycle = backend.lifecycle  # written here, and nowhere else
        self.launch = backend.config.launch
        self.pgid: int | None = None
        self.output: OutputRelay | None = None  # the current process's, for error messages
        self.failures = 0  # consecutive; decides the next backoff
        self.task: asyncio.Task[None] | None = None
        self.asked: asyncio.Future[str] | None = None  # set while an operator's restart can be taken: its reason
        self.parking = Parking(parked=self.launch.on_demand and self.launch.swap == "restart")

    def request_restart(self, reason: str) -> str:
        """An operator's restart: end the process and start it again now; what will happen, in words.

        Taken while the process serves or while it waits for its backoff; a backend that was given
        up starts again in a new task. Refused while it loads (a restart would start the same load
        again) and while the gateway stops."""
        supervisor = self.supervisor
        if supervisor.stopping:
            raise RestartRefused("the gateway is shutting down")
        if self.task is None or self.task.done():
            if not self.lifecycle.given_up:
                raise RestartRefused(f"backend {self.name!r} is not supervised yet (the gateway is starting); retry shortly")
            self.lifecycle.resumed()
            self.lifecycle.restarted()
            supervisor.metrics.backend_restarts.labels(self.name).inc()
            self.failures = 0
            log.warning("backend %r: started again on request (%s) after giving up", self.name, reason)
            supervisor.tasks[supervisor.units.index(self)] = supervisor._task(self, first=False)
            return "starting again (it had been given up)"
        if self.parking.wanted:
            raise RestartRefused(f"backend {self.name!r} is parked by its residency (on demand, restart mode): it starts "
                                 f"when a request needs it, or on POST /admin/backends/{self.name}/wake")
        asked = self.asked
        if asked is None:
            raise RestartRefused(f"backend {self.name!r} is {self.lifecycle.state} (loading its model): a restart would "
                                 f"only start the same load again; wait until it is ready or has failed")
        if asked.done():
            return "already restarting"
        asked.set_result(reason)
        return "restarting"

    @property
    def name(self) -> str:
        return self.backend.name

    # -- what the residency manager asks -----------------------------------------------------
    @property
    def running(self) -> bool:
        """A process (group) exists: starting, serving, or being ended."""
        return self.pgid is not None

    async def park(self) -> None:
        """End the process on purpose and keep it down; returns once its group is gone."""
        self.parking.request()
        await self.parking.until_parked()

    def unpark(self) -> asyncio.Future[str | None]:
        """Start it again; the future gets None once it is ready, else why the start failed."""
        return self.parking.release()

    # -- the owning task ---------------------------------------------------------------------
    async def run(self, first: bool = True) -> None:
        backend, lifecycle = self.backend, self.lifecycle
        residence = self.supervisor.residence if backend.residency is not None else None
        loop = asyncio.get_running_loop()
        proc = relay = exited = None
        try:
            while True:
                proc = relay = exited = None
                ready_at = healthy_until = asked = None
                if self.parking.wanted:
                    await self._stay_parked()
                    first = True
                try:
                    if residence is not None:
                        await residence.admit(backend)  # room is made within the budget first
                    async with self.supervisor.loading:
                        if self.parking.wanted:
                            raise _Parked()
                        lifecycle.starting(first)
                        proc, relay, exited = await self._launch()
                        await self._await_ready(proc, exited)
                        await self._warm_up()
                    ready_at = time.monotonic()
                    self._mark_ready(proc)
                    self.asked = asked = loop.create_future()
                    await self.supervisor.discovery.refresh(backend)
                    self.parking.start_result(None)
                    if residence is not None:
                        residence.loaded(backend)
                    failing = await self._watch(exited, asked)
                    healthy_until = backend.health_failing_since  # None: healthy until now
                    self.asked = None
                    if asked.done():
                        lifecycle.restarting(f"restarted on request: {asked.result()}")
                        log.warning("backend %r (pid %d): restarting on request (%s)", self.name, proc.pid, asked.result())
                    elif failing is None and not exited.done():
                        raise _Parked()
                    elif failing is None:
                        code = exited.result()
                        lifecycle.ended(code)
                        lifecycle.restarting(f"exited unexpectedly with {describe_exit(code)}")
                        lifecycle.restarting(await self._exit_report(lifecycle.error or ""))
                        log.error("backend %r (pid %d) %s", self.name, proc.pid, lifecycle.error)
                    else:
                        self._restart_unhealthy(proc, failing)
                    await self._end(proc, relay, exited)  # what is left of its group goes too
                except _Parked:
                    await self._end(proc, relay, exited)
                    continue
                except StartFailed as failure:
                    lifecycle.failed(str(failure), give_up=failure.permanent)
                    log.error("backend %r failed to start: %s", self.name, failure)
                    self.parking.start_result(str(failure))
                    if failure.permanent:
                        return
                await self._end(proc, relay, exited)
                if asked is None or not asked.done():  # an operator's restart is no failure and waits for nothing
                    if residence is not None and not residence.keep_running(backend):
                        log.warning("backend %r: its process ended while the backend was %s; parked, and started "
                                    "again when a request needs it. Last: %s", self.name, backend.state, lifecycle.error)
                        self.parking.request()
                        continue
                    if ready_at is None:
                        healthy_for = None
                    else:
                        healthy_for = (time.monotonic() if healthy_until is None else healthy_until) - ready_at
                    self.failures = count_failure(self.failures, healthy_for, self.launch.restart_backoff_max)
                    if gives_up(self.failures, self.launch.max_restarts):
                        self._give_up()
                        return
                    delay = backoff(self.failures, self.launch.restart_backoff_initial, self.launch.restart_backoff_max)
                    log.warning("backend %r: restarting in %.1f s", self.name, delay)
                    if await self._backoff(delay):
                        continue  # parked meanwhile
                first = False
                lifecycle.restarted()
                self.supervisor.metrics.backend_restarts.labels(self.name).inc()
        finally:
            # Stopped (cancelled), given up, or a bug: the process group must not outlive this task.
            await self._end(proc, relay, exited)
            lifecycle.stopped()
            self.parking.start_result(lifecycle.error or "stopped")
            self.parking.reached()  # nobody waits for a park that can no longer come

    async def _stay_parked(self) -> None:
        self.lifecycle.parked()
        self.parking.reached()
        log.info("backend %r is parked (no process) until it is needed", self.name)
        await self.parking.until_released()

    async def _backoff(self, delay: float) -> bool:
        """The wait before a restart, cut short by an operator's restart or a park request (True then)."""
        if self.parking.wanted:
            return True
        asked: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.asked = asked  # an operator's restart ends the wait
        parked = asyncio.ensure_future(self.parking.until_requested())
        watched: list[asyncio.Future[Any]] = [asked, parked]
        try:
            await asyncio.wait(watched, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
        finally:
            parked.cancel()
            self.asked = None
        return self.parking.wanted

    # -- steps -------------------------------------------------------------------------------
    async def _launch(self) -> tuple[asyncio.subprocess.Process, asyncio.Task[None], asyncio.Future[int]]:
        config = self._planned_config()
        host, port = launch.address(config)
        if await _port_taken(host, port):
            raise StartFailed(f"{host}:{port} already accepts connections: another process (a vLLM left "
                              f"from an earlier run?) holds the port; not starting a second server there")
        await self._check_gpu_memory(config)
        argv = launch.command_line(config)
        log.info("launching backend %r: %s", self.name, shlex.join(argv))
        spawning = asyncio.ensure_future(launch.spawn(argv, launch.environment(config)))
        try:
            proc = await asyncio.shield(spawning)
        except asyncio.CancelledError:
            # Stopped while the process was being created: it must not survive us.
            with contextlib.suppress(Exception):
                late = await spawning
                launch.signal_group(late.pid, signal.SIGKILL)
                await asyncio.wait_for(late.communicate(), 5.0)  # reap it and close its pipe
            raise
        except FileNotFoundError:
            raise StartFailed(f"cannot run {argv[0]!r}: no such program (check launch.command)", permanent=True) from None
        except PermissionError:
            raise StartFailed(f"cannot run {argv[0]!r}: permission denied (check launch.command)", permanent=True) from None
        self.pgid = self.supervisor.pgids[self.name] = proc.pid
        self.lifecycle.spawned(proc.pid)
        relay = OutputRelay(self.name, launch.log_file_path(config), self.supervisor.sink, tap=self.supervisor.output_tap)
        self.output = relay
        assert proc.stdout is not None  # spawned with stdout=PIPE
        relay_task = asyncio.create_task(relay.run(proc.stdout), name=f"output-{self.name}")
        exited = asyncio.ensure_future(proc.wait())
        return proc, relay_task, exited

    def _planned_config(self) -> BackendConfig:
        """The backend as it is launched: an `auto` share replaced by the planned one and its exact
        `--kv-cache-memory-bytes` added (`planner.plan.planned_backend`)."""
        config = self.backend.config
        planned = self.supervisor.plans.get(self.name)
        if planned is not None:
            config = planned_backend(config, planned)
        assert config.launch is not None
        if config.launch.gpu_memory_utilization == "auto":
            reason = planned.reason if planned is not None else "no memory plan was made"
            raise StartFailed(f"gpu_memory_utilization: auto could not be planned ({reason}); give a fraction, "
                              f"or make the model's config.json readable (see `vllm-gateway plan`)", permanent=True)
        return config

    async def _check_gpu_memory(self, config: BackendConfig) -> None:
        """Refuse this start, naming who holds the memory, when its GPUs lack the room vLLM will
        ask for (vLLM's own error names neither); retried with the usual backoff."""
        telemetry = self.supervisor.telemetry
        planned = self.supervisor.plans.get(self.name)
        if telemetry is None or not telemetry.available or planned is None:
            return
        assert config.launch is not None
        share = config.launch.gpu_memory_utilization
        snapshot = await asyncio.to_thread(telemetry.snapshot)  # NVML blocks
        problem = check_free_memory(snapshot, self.name, planned.devices or ("0",),
                                    share if isinstance(share, float) else planned.share or 0.92)
        if problem is not None:
            raise StartFailed(problem)

    async def _await_ready(self, proc: asyncio.subprocess.Process, exited: asyncio.Future[int]) -> None:
        loop = asyncio.get_running_loop()
        timeout = self.launch.ready_timeout
        deadline = loop.time() + timeout
        interval = self.supervisor.probe_interval
        while True:
            if exited.done():
                self.lifecycle.ended(exited.result())
                report = await self._exit_report(f"exited with {describe_exit(exited.result())} while loading (pid {proc.pid})")
                hint = launch.start_hint(self.backend.config, report)
                raise StartFailed(f"{hint}. {report}" if hint else report, permanent=hint is not None)
            if self.parking.wanted:
                raise _Parked()
            if await self._healthy() and not exited.done():
                return
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise StartFailed(self._with_output(
                    f"did not answer GET /health with 200 within {timeout:g} s (launch.ready_timeout)"))
            await asyncio.wait([exited], timeout=min(interval, remaining))

    async def _healthy(self) -> bool:
        return await health_error(self.backend.upstreams[0], 5.0) is None

    async def _warm_up(self) -> None:
        if self.launch.warmup:
            await warm_up(self.backend)

    async def _watch(self, exited: asyncio.Future[int], asked: asyncio.Future[str]) -> float | None:
        """Wait while the ready process runs. None once it exited, an operator asked for a restart,
        or a park was asked (the caller tells them apart); else the seconds its health checks have
        failed without a break, once that reached `launch.unhealthy_restart_after`.

        The registry's health monitor does the probing (`Backend.health_failing_since`); this
        only reads what it found, so there is one probe and one interval to configure.
        """
        limit = self.launch.unhealthy_restart_after
        parked = asyncio.ensure_future(self.parking.until_requested())
        watched: list[asyncio.Future[Any]] = [exited, asked, parked]
        try:
            while True:
                done, _ = await asyncio.wait(watched, timeout=self.supervisor.probe_interval if limit else None,
                                             return_when=asyncio.FIRST_COMPLETED)
                if done:
                    return None
                failing = unhealthy_too_long(self.backend.health_failing_since, time.monotonic(), limit)
                if failing is not None:
                    return failing
        finally:
            parked.cancel()

    def _restart_unhealthy(self, proc: asyncio.subprocess.Process, failing: float) -> None:
        last = self.backend.last_health_error or "health check failed"
        took = f"{failing:.0f}" if failing >= 10 else f"{failing:.1f}"
        self.lifecycle.restarting(self._with_output(
            f"restarted: /health failed for {took} s (last: {last}); "
            f"launch.unhealthy_restart_after is {self.launch.unhealthy_restart_after:g} s"))
        log.warning("backend %r (pid %d): GET /health has failed for %s s (last: %s) while the process "
                    "kept running; ending its process group and starting it again. Check its last output "
                    "(lines prefixed [%s]) for the engine's error (out of memory, a dead engine core); "
                    "launch.unhealthy_restart_after sets the limit, 0 turns this off",
                    self.name, proc.pid, took, last, self.name)

    def _give_up(self) -> None:
        lifecycle = self.lifecycle
        lifecycle.failed(
            f"gave up after {self.failures} consecutive failures (launch.max_restarts is "
            f"{self.launch.max_restarts}): read the last failure and its output below, fix the cause, "
            f"then restart the gateway. Last failure: {lifecycle.error}", give_up=True)
        log.error("backend %r: %s", self.name, lifecycle.error)

    def _mark_ready(self, proc: asyncio.subprocess.Process) -> None:
        lifecycle = self.lifecycle
        lifecycle.ready()  # a new epoch: only this process's health checks count from here on
        self.backend.breaker.record_success()  # it answered /health: what the previous process tripped is over
        loaded = time.monotonic() - (lifecycle.started_at or time.monotonic())
        log.info("backend %r is ready (pid %d, loaded in %.1f s)", self.name, proc.pid, loaded)

    async def _end(self, proc: asyncio.subprocess.Process | None, relay: asyncio.Task[None] | None,
                   exited: asyncio.Future[int] | None) -> None:
        """End the whole process group (also when the leader is gone but its children are not)."""
        if proc is not None and self.pgid is not None:
            if await launch.end_group(self.pgid, exited, self.launch.stop_timeout):
                log.warning("backend %r did not stop within %g s of SIGTERM (launch.stop_timeout); killed it",
                            self.name, self.launch.stop_timeout)
            self.pgid = None
            self.supervisor.pgids.pop(self.name, None)
        if relay is not None:
            await _settle(relay)
        code = exited.result() if exited is not None and exited.done() and not exited.cancelled() else None
        self.lifecycle.ended(code)

    def _with_output(self, message: str) -> str:
        tail = self.output.last_lines() if self.output is not None else ""
        return f"{message}; last output:\n{tail}" if tail else f"{message} (it printed nothing)"

    async def _exit_report(self, message: str) -> str:
        """`message` plus the last lines the process printed before it exited.

        Taken before the rest of the group is stopped: the children's shutdown chatter would
        otherwise push the lines that explain the exit (a traceback, an OOM) out of the tail.
        """
        await asyncio.sleep(EXIT_OUTPUT_GRACE)  # let the relay take what is still in the pipe
        return self._with_output(message)


async def _settle(relay: asyncio.Task[None], timeout: float = 2.0) -> None:
    """Let the output relay drain what the process printed last; give up after `timeout`."""
    if relay.done():
        return
    done, _ = await asyncio.wait([relay], timeout=timeout)
    if not done:
        relay.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await relay


async def _port_taken(host: str, port: int) -> bool:
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), 2.0)
    except (TimeoutError, OSError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        await writer.wait_closed()
    return True


__all__ = ["RestartRefused", "StartFailed", "Supervisor", "Unit"]
