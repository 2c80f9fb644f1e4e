"""The residency manager: the single writer of every on-demand backend's `Residency`.

One task (`_run`) takes every decision in turn (`policy.decide` over a snapshot) and carries it
out before looking again, so there is never more than one swap in flight, and a sleep finishes
before the wake it makes room for begins. The sleeps and wakes that touch a live process take
the loading turn (`supervise.turn`) that starts and restarts take too.

Who asks what:
- a forwarded request (`forwarding.exchange`) or realtime session calls `enter` before it takes
  its backend's concurrency limit, and `leave` when it ends: `enter` returns at once while the
  backend is awake, else waits for its wake; requests waiting for one backend are let through
  together, in arrival order. The in-flight count keeps a backend from being put to sleep;
- the supervisor (`supervise.residence.Residence`) calls `admit` before it starts an on-demand
  process, `loaded` once it is ready, and `keep_running` when it ended;
- the operator's routes (`api.admin`) call `sleep_now` / `wake_now`.

How a backend sleeps and wakes: `swap: sleep` through vLLM's dev routes (`residency.client`),
`swap: restart` by parking its supervisor unit (the process ends; an unpark starts it again). A
sleep-mode process that misbehaves (its sleep fails, it keeps its GPU memory, its wake fails) is
parked too, so its memory is free for sure; its next wake is then a cold start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ..errors import ServiceUnavailable
from ..metrics import GatewayMetrics
from ..routing.admission import unavailable
from ..routing.backend import Backend
from ..routing.registry import Registry
from ..routing.state import ASLEEP, AWAKE, FAILED, HOLDS_MEMORY, READY, RESTARTING, SLEEP, STARTING, WAKE
from ..settings import Settings
from ..supervise.policy import backoff
from ..supervise.turn import LoadingTurn
from ..supervise.warmup import warm_up
from . import policy
from .budget import Budget
from .client import SleepClient, SwapFailed
from .memory import MemoryProbe, host_available, level_one_fits
from .slot import Holder, Slot, Unit

log = logging.getLogger("vllm_gateway.residency")
EVICTED_GRACE = 5.0  # seconds ended streams get to finish their last event before the sleep goes on


class ResidencyManager:
    def __init__(self, registry: Registry, metrics: GatewayMetrics, turn: LoadingTurn, budget: Budget, *,
                 max_swap_delay: float = 10.0, weights_bytes: Mapping[str, int] | None = None,
                 memory_probe: MemoryProbe | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.metrics = metrics
        self.turn = turn
        self.budget = budget
        self.max_swap_delay = max_swap_delay
        self.weights_bytes = dict(weights_bytes or {})
        self.memory_probe = memory_probe
        self.clock = clock
        self.slots: dict[str, Slot] = {}
        for backend in registry.backends.values():
            launch = backend.config.launch
            if backend.residency is None or launch is None:
                continue
            sleeper = SleepClient(backend.upstreams[0].client, launch.effective_wake_timeout)
            self.slots[backend.name] = Slot(backend, backend.residency, launch, sleeper)
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    # -- wiring --------------------------------------------------------------------------------
    def attach(self, units: Iterable[Unit]) -> None:
        """The supervisor's units of the on-demand backends (park, unpark)."""
        for unit in units:
            slot = self.slots.get(unit.backend.name)
            if slot is not None:
                slot.unit = unit

    def start(self) -> None:
        for slot in self.slots.values():
            self.metrics.backend_awake.labels(slot.name).set(0)
            if slot.launch.swap == "sleep" and slot.launch.sleep_level == 1 and slot.name not in self.weights_bytes:
                log.info("backend %r: the weights' size is unknown (no memory plan), so host RAM is not checked "
                         "before its level-1 sleeps (they need about the weights' size free)", slot.name)
            if self.budget.shares.get(slot.name) is None:
                log.warning("backend %r: its GPU share is not known (gpu_memory_utilization auto without a plan), so "
                            "it is only ever awake alone beside the always-resident backends", slot.name)
        self._task = asyncio.get_running_loop().create_task(self._run(), name="residency")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        error = ServiceUnavailable("the gateway is shutting down; retry against another instance",
                                   headers={"Retry-After": "1"}, code="shutting_down")
        for slot in self.slots.values():
            slot.fail_waiters(error)

    # -- requests ------------------------------------------------------------------------------
    async def enter(self, backend: Backend, holder: Holder) -> None:
        """Return once `backend` is awake, with `holder` counted in flight there (until `leave`).
        Raises ServiceUnavailable when its wake failed; the caller bounds the wait."""
        slot = self.slots[backend.name]
        residency = slot.residency
        if residency.state == AWAKE:
            slot.count_in(self.clock())
            slot.holders.add(holder)
            return
        if residency.state == FAILED and residency.retry_in() > 0:
            raise self._wake_failed_error(slot)
        waiter = slot.wait_for_wake(self.clock(), request=True)
        self._changed.set()
        try:
            await waiter.future
        except BaseException:
            if waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self._count_out(slot)  # let through as it left: give its place back
            raise
        finally:
            if slot.forget(waiter):
                self._changed.set()
            self.metrics.request_wait.labels("wake").observe(self.clock() - waiter.since)
        slot.holders.add(holder)

    def leave(self, backend: Backend, holder: Holder) -> None:
        slot = self.slots[backend.name]
        slot.holders.discard(holder)
        self._count_out(slot)

    def wait_timed_out(self, backend: Backend, waited: float, limit: str) -> ServiceUnavailable:
        """The answer to a request whose wait for `backend`'s wake ran out (`limit` names the setting)."""
        residency = self.slots[backend.name].residency
        retry = max(1, round(residency.last_wake_s or 10.0))
        return ServiceUnavailable(
            f"backend {backend.name!r} is {residency.state} and was not awake within {waited:.0f} s ({limit}); "
            f"retry in {retry} s (GET /status shows its residency)",
            headers={"Retry-After": str(retry)}, code="backend_asleep")

    # -- the supervisor's questions (supervise.residence.Residence) ------------------------------
    async def admit(self, backend: Backend) -> None:
        slot = self.slots[backend.name]
        if slot.residency.state in HOLDS_MEMORY:
            return  # waking (an unpark), or awake and restarting: its share is already counted
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.admission, slot.admission_since = future, self.clock()
        self._changed.set()
        try:
            await future
        finally:
            if slot.admission is future:
                slot.admission = None

    def loaded(self, backend: Backend) -> None:
        self._changed.set()

    def keep_running(self, backend: Backend) -> bool:
        slot = self.slots[backend.name]
        residency = slot.residency
        self._changed.set()
        if residency.state == AWAKE:
            return True
        if residency.state == ASLEEP and not residency.cold:
            residency.cold = True
            residency.error = f"its process ended while asleep ({backend.lifecycle.error if backend.lifecycle else ''}); " \
                              f"the next wake starts it again"
        return False

    # -- the operator's routes -----------------------------------------------------------------
    async def wake_now(self, name: str) -> float:
        """Wake `name` (a pre-warm), bounded by its launch.max_wait; the seconds it took."""
        slot = self.slots[name]
        started = self.clock()
        if slot.residency.state == AWAKE:
            return 0.0
        if slot.backend.given_up:
            raise unavailable(slot.backend)
        if slot.residency.state == FAILED and slot.residency.retry_in() > 0:
            raise self._wake_failed_error(slot)
        waiter = slot.wait_for_wake(self.clock(), request=False)
        self._changed.set()
        try:
            async with asyncio.timeout(slot.launch.max_wait):
                await waiter.future
        except TimeoutError:
            raise self.wait_timed_out(slot.backend, self.clock() - started, "launch.max_wait") from None
        finally:
            if slot.forget(waiter):
                self._changed.set()
        return self.clock() - started

    async def sleep_now(self, name: str) -> float:
        """Put `name` to sleep now (its in-flight requests drain first, up to drain_timeout)."""
        slot = self.slots[name]
        started = self.clock()
        if slot.residency.state in (ASLEEP, FAILED):
            return 0.0
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        slot.sleep_waiters.append(future)
        self._changed.set()
        try:
            await future
        finally:
            if future in slot.sleep_waiters:
                slot.sleep_waiters.remove(future)
        return self.clock() - started

    # -- the one task ----------------------------------------------------------------------------
    async def _run(self) -> None:
        while True:
            self._changed.clear()
            now = self.clock()
            self._let_through_where_awake()
            decision = policy.decide([self._candidate(s, now) for s in self.slots.values()], self.budget, now,
                                     self.max_swap_delay)
            if isinstance(decision, policy.Wait):
                timeout = None if decision.until is None else max(0.0, decision.until - now) + 0.01
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(timeout):
                        await self._changed.wait()
                continue
            try:
                await self._carry_out(decision)
            except asyncio.CancelledError:
                raise
            except Exception:  # a bug here must not stop every future swap
                log.exception("residency step %r failed", decision)
                await asyncio.sleep(1.0)

    async def _carry_out(self, decision: policy.Wake | policy.Drain | policy.Sleep | policy.Undrain) -> None:
        slot = self.slots[decision.name]
        if isinstance(decision, policy.Wake):
            await self._wake(slot)
        elif isinstance(decision, policy.Drain):
            slot.residency.going_to_sleep()
            slot.draining_since = self.clock()
            log.info("backend %r: draining %d request(s) in flight before it sleeps (launch.drain_timeout %g s)",
                     slot.name, slot.residency.in_flight, slot.launch.drain_timeout)
        elif isinstance(decision, policy.Undrain):
            slot.residency.back_awake()
            slot.draining_since = None
        elif isinstance(decision, policy.Sleep):
            await self._sleep(slot, decision.evict)

    def _candidate(self, slot: Slot, now: float) -> policy.Candidate:
        residency, lifecycle, unit = slot.residency, slot.backend.lifecycle, slot.unit
        running = unit is not None and unit.running
        if lifecycle is not None and lifecycle.state == READY:
            process = policy.READY
        elif lifecycle is not None and (lifecycle.state == STARTING or running and lifecycle.state == RESTARTING):
            process = policy.LOADING  # a first start stays admitted until loaded, even while it waits its turn
        else:
            process = policy.DOWN
        state = residency.state
        if slot.backend.given_up:
            state = FAILED
        if slot.admission is not None:
            wakeable = True
        elif residency.cold:
            wakeable = unit is not None and unit.parking.is_parked
        else:
            wakeable = process == policy.READY
        return policy.Candidate(
            name=slot.name, state=state, process=process, in_flight=residency.in_flight,
            wanted_since=slot.wanted_since, wakeable=wakeable and not slot.backend.given_up,
            awake_since=residency.awake_since, used_since_wake=residency.used_since_wake,
            last_used=residency.last_used, min_awake=slot.launch.min_awake, idle_sleep=slot.launch.idle_sleep,
            draining_since=slot.draining_since, drain_timeout=slot.launch.drain_timeout,
            sleep_asked=bool(slot.sleep_waiters),
            retry_at=float("inf") if slot.backend.given_up else residency.retry_at,
        )

    # -- waking ------------------------------------------------------------------------------------
    async def _wake(self, slot: Slot) -> None:
        residency, backend = slot.residency, slot.backend
        if slot.admission is not None:  # the supervisor starts it, in its own turn
            residency.started()
            self.metrics.backend_awake.labels(slot.name).set(1)
            slot.admission.set_result(None)
            slot.admission = None
            return
        for_requests = any(w.request for w in slot.waiters)
        started = self.clock()
        cold = residency.cold
        residency.waking()
        self.metrics.backend_awake.labels(slot.name).set(1)
        timeout = slot.launch.effective_wake_timeout
        log.info("backend %r: waking (%s)", slot.name, "starting its process" if cold else "POST /wake_up")
        try:
            if cold:
                assert slot.unit is not None
                async with asyncio.timeout(timeout):
                    error = await slot.unit.unpark()  # the unit loads in the loading turn, warm-up included
                if error is not None:
                    raise SwapFailed(error)
            else:
                async with self.turn.taken_by(f"wake {slot.name}"):
                    async with asyncio.timeout(timeout):
                        await slot.sleeper.wake(slot.launch.sleep_level)
                        backend.answered()
                        if slot.launch.warmup:
                            await warm_up(backend)
        except (SwapFailed, TimeoutError) as exc:
            reason = str(exc) if isinstance(exc, SwapFailed) else f"not awake within {timeout:g} s (launch.wake_timeout)"
            await self._wake_failed(slot, reason)
            return
        took = self.clock() - started
        residency.awake(took, for_requests)
        self.metrics.backend_swaps.labels(slot.name, WAKE).inc()
        self.metrics.backend_wake.labels(slot.name).observe(took)
        log.info("backend %r is awake (woken in %.2f s)", slot.name, took)
        slot.let_through(self.clock())

    async def _wake_failed(self, slot: Slot, reason: str) -> None:
        residency = slot.residency
        log.error("backend %r failed to wake: %s; ending its process so its GPU memory is free", slot.name, reason)
        await self._park(slot)
        delay = backoff(residency.failures + 1, max(1.0, slot.launch.restart_backoff_initial),
                        max(1.0, slot.launch.restart_backoff_max))
        residency.failed(f"wake failed: {reason}", self.clock() + delay)
        self.metrics.backend_awake.labels(slot.name).set(0)
        slot.fail_waiters(self._wake_failed_error(slot))

    def _wake_failed_error(self, slot: Slot) -> ServiceUnavailable:
        residency = slot.residency
        retry = max(1, round(residency.retry_in()))
        return ServiceUnavailable(
            f"backend {slot.name!r} could not be woken ({residency.error}); retry in {retry} s (GET /status "
            f"shows its residency)", headers={"Retry-After": str(retry)}, code="wake_failed")

    # -- sleeping ----------------------------------------------------------------------------------
    async def _sleep(self, slot: Slot, evict: bool) -> None:
        residency, backend = slot.residency, slot.backend
        if residency.state == AWAKE:
            residency.going_to_sleep()
        if evict:
            await self._evict(slot)
        lifecycle = backend.lifecycle
        alive = lifecycle is not None and lifecycle.state == READY
        note = None
        cold = True
        if slot.launch.swap == "restart" or not alive:
            await self._park(slot)
        elif slot.launch.sleep_level == 1 and not self._host_ram_for(slot):
            note = (f"host RAM too short for a level-1 sleep (about {self.weights_bytes[slot.name] / 2**30:.1f} GiB of "
                    f"weights); its process was stopped instead, so the next wake is a cold start")
            log.warning("backend %r: %s", slot.name, note)
            await self._park(slot)
        else:
            try:
                async with self.turn.taken_by(f"sleep {slot.name}"):
                    async with asyncio.timeout(slot.launch.effective_wake_timeout):
                        await slot.sleeper.sleep(slot.launch.sleep_level)
                cold = False
            except (SwapFailed, TimeoutError) as exc:
                reason = str(exc) if isinstance(exc, SwapFailed) else "no answer within launch.wake_timeout"
                note = f"sleep failed ({reason}); its process was stopped instead, so the next wake is a cold start"
                log.error("backend %r: %s", slot.name, note)
                await self._park(slot)
            else:
                kept = await self._kept_memory(slot)
                if kept is not None:
                    note = (f"still held {kept / 2**30:.1f} GiB of GPU memory after sleeping (a vLLM sleep-mode bug); "
                            f"its process was restarted so the memory is free; the next wake is a cold start")
                    log.error("backend %r: %s", slot.name, note)
                    await self._park(slot)
                    cold = True
        residency.asleep(cold, note)
        slot.draining_since = None
        self.metrics.backend_awake.labels(slot.name).set(0)
        self.metrics.backend_swaps.labels(slot.name, SLEEP).inc()
        log.info("backend %r is asleep (%s)", slot.name, "process stopped" if cold else f"level {slot.launch.sleep_level}")
        for future in slot.sleep_waiters:
            if not future.done():
                future.set_result(None)
        slot.sleep_waiters.clear()

    async def _evict(self, slot: Slot) -> None:
        """The drain ran out: end what is still in flight (streams get an SSE error event)."""
        error = ServiceUnavailable(
            f"backend {slot.name!r} is going to sleep so that another model can be served, and this response ran "
            f"past its launch.drain_timeout ({slot.launch.drain_timeout:g} s); retry",
            headers={"Retry-After": "1"}, code="backend_sleeping")
        log.warning("backend %r: %d request(s) still in flight after launch.drain_timeout %g s; ending them",
                    slot.name, len(slot.holders), slot.launch.drain_timeout)
        for holder in list(slot.holders):
            holder.evict(error)
        deadline = self.clock() + EVICTED_GRACE
        while slot.residency.in_flight and self.clock() < deadline:
            self._changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.1):
                    await self._changed.wait()

    async def _park(self, slot: Slot) -> None:
        """End the process (if any) and keep it down; in the loading turn when it was serving."""
        unit = slot.unit
        if unit is None:
            return
        lifecycle = slot.backend.lifecycle
        if unit.running and lifecycle is not None and lifecycle.state == READY:
            async with self.turn.taken_by(f"stop {slot.name}"):
                await unit.park()
        else:
            await unit.park()

    def _host_ram_for(self, slot: Slot) -> bool:
        weights = self.weights_bytes.get(slot.name)
        if weights is None:
            return True
        available = host_available()
        return available is None or level_one_fits(weights, available)

    async def _kept_memory(self, slot: Slot) -> int | None:
        """Bytes a slept process still holds when that is more than a sleeping vLLM should, else None."""
        if self.memory_probe is None:
            return None
        try:
            found = await self.memory_probe(slot.name)
        except Exception:  # telemetry is a check, never a reason to fail a swap
            log.exception("GPU memory probe for backend %r failed", slot.name)
            return None
        if found is None:
            return None
        held, total = found
        devices = self.budget.devices.get(slot.name, ())
        share = max((self.budget.share_on(slot.name, d) for d in devices), default=self.budget.limit)
        return held if policy.kept_memory(held, total, share) else None

    def _let_through_where_awake(self) -> None:
        for slot in self.slots.values():
            lifecycle = slot.backend.lifecycle
            if slot.waiters and slot.residency.state == AWAKE and lifecycle is not None and lifecycle.state == READY:
                slot.let_through(self.clock())

    def _count_out(self, slot: Slot) -> None:
        if slot.count_out(self.clock()):
            self._changed.set()

    def status(self) -> dict[str, Any]:
        """For /status: who holds the loading turn, and the budget's shares as the manager counts them."""
        holding = [s.name for s in self.slots.values() if s.residency.state in HOLDS_MEMORY]
        return {"turn": self.turn.holder, "budget": self.budget.limit,
                "in_use": {device: round(used, 3) for device, used in self.budget.use(holding).items()}}


def build_residency(settings: Settings, registry: Registry, metrics: GatewayMetrics, turn: LoadingTurn, *,
                    planned_shares: Mapping[str, float] | None = None, weights_bytes: Mapping[str, int] | None = None,
                    memory_probe: MemoryProbe | None = None) -> ResidencyManager | None:
    """The manager for a configuration's on-demand backends; None when there are none."""
    if not any(b.residency is not None for b in registry.backends.values()):
        return None
    return ResidencyManager(registry, metrics, turn, settings.residency_budget(planned_shares),
                            max_swap_delay=settings.gpu.max_swap_delay, weights_bytes=weights_bytes,
                            memory_probe=memory_probe)


__all__ = ["ResidencyManager", "build_residency"]
