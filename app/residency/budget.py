"""Which backends may hold GPU memory at the same time: the budget arithmetic, per device.

The always-resident backends hold their shares for good; an on-demand backend holds its share
while it is awake, waking or going to sleep. The rule, on every device: the residents plus the
on-demand backends holding memory stay within `gpu.memory_budget`. The static form of the rule
(what `serve` and `check-config` refuse): the residents alone fit, and every on-demand backend
fits beside them, else it could never be woken. Pure arithmetic; the manager and the checks share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..planner.plan import Plan
    from ..settings import Settings

EPSILON = 1e-9  # shares are decimal fractions: 0.1 + 0.8 must fit a budget of 0.9


@dataclass(frozen=True)
class Budget:
    """`shares[name]` is a fraction of each device's total; None where it is not known (`auto`
    without a plan): such a backend is counted as taking all the residents leave, so it is awake alone."""

    limit: float
    devices: Mapping[str, tuple[str, ...]]
    shares: Mapping[str, float | None]
    resident: frozenset[str] = field(default_factory=frozenset)

    def resident_use(self, device: str) -> float:
        return sum(self.shares.get(name) or 0.0 for name in self.resident if device in self.devices.get(name, ()))

    def share_on(self, name: str, device: str) -> float:
        if device not in self.devices.get(name, ()):
            return 0.0
        share = self.shares.get(name)
        return max(0.0, self.limit - self.resident_use(device)) if share is None else share

    def use(self, holding: Iterable[str]) -> dict[str, float]:
        """Per device: the residents plus `holding` (on-demand backends with memory)."""
        names = set(holding) - self.resident
        used: dict[str, float] = {}
        for name in [*self.resident, *names]:
            for device in self.devices.get(name, ()):
                used[device] = used.get(device, 0.0) + self.share_on(name, device)
        return used

    def over(self, holding: Iterable[str], joining: str) -> dict[str, float]:
        """How far over the limit each device would be if `joining` took its share too (only the
        devices that would be over)."""
        used = self.use(holding)
        out = {}
        for device in self.devices.get(joining, ()):
            total = used.get(device, 0.0) + self.share_on(joining, device)
            if total > self.limit + EPSILON:
                out[device] = total - self.limit
        return out

    def fits(self, holding: Iterable[str]) -> bool:
        return all(total <= self.limit + EPSILON for total in self.use(holding).values())


def problems(budget: Budget, on_demand: Iterable[str]) -> list[str]:
    """Why this set of backends cannot work: residents over the budget on a device, or an
    on-demand backend that does not fit beside them. One sentence each, saying what to change."""
    lines = []
    all_devices = sorted({d for name in budget.devices for d in budget.devices[name]})
    several = len(all_devices) > 1
    for device in all_devices:
        used = budget.resident_use(device)
        if used > budget.limit + EPSILON:
            names = _listing(budget, budget.resident, device)
            lines.append(f"the always-resident backends' gpu_memory_utilization add up to {used:.2f}"
                         f"{f' on GPU {device}' if several else ''} ({names}), above the budget of {budget.limit:g}; "
                         f"lower a share, raise gpu.memory_budget, or give a backend `residency: on_demand`")
    for name in on_demand:
        share = budget.shares.get(name)
        if share is None:
            continue
        for device in budget.devices.get(name, ()):
            used = budget.resident_use(device)
            if used <= budget.limit + EPSILON and used + share > budget.limit + EPSILON:
                beside = f"beside the always-resident backends ({_listing(budget, budget.resident, device)})" \
                    if used else "even alone"
                where = f" on GPU {device}" if several else ""
                lines.append(f"backend {name} (residency: on_demand, gpu_memory_utilization {share:g}) could never be "
                             f"woken{where}: {beside} it needs {round(used + share, 3):g}, above the budget of "
                             f"{budget.limit:g}; lower its share or the residents', or raise gpu.memory_budget")
    return lines


def awake_together(budget: Budget, on_demand: list[str]) -> int:
    """The most on-demand backends that can be awake at once (smallest shares first): a figure
    for check-config, not a schedule."""
    chosen: list[str] = []
    for name in sorted(on_demand, key=lambda n: budget.shares.get(n) or budget.limit):
        if budget.fits([*chosen, name]):
            chosen.append(name)
    return len(chosen)


def plan_figures(plan: Plan) -> tuple[dict[str, float], dict[str, int]]:
    """From the memory plan: the shares it computed for `auto` backends, and each backend's weight
    bytes in all (per GPU times tensor parallel: what a level-1 sleep puts in host RAM)."""
    shares = {b.name: b.share for b in plan.backends if b.share is not None and b.share_source.startswith("auto")}
    weights = {b.name: b.weights_bytes * b.tensor_parallel for b in plan.backends if b.weights_bytes}
    return shares, weights


def summary(budget: Budget, on_demand: list[str]) -> str:
    """One line for check-config: what is always held, what may be awake together."""
    devices = sorted({d for name in budget.devices for d in budget.devices[name]}) or ["0"]
    resident = ", ".join(f"{budget.resident_use(d):.2f}" + (f" on GPU {d}" if len(devices) > 1 else "") for d in devices)
    sleepers = ", ".join(f"{name} {budget.shares[name]:g}" if budget.shares.get(name) is not None else f"{name} (share unknown)"
                         for name in on_demand)
    return (f"GPU memory: always resident {resident} of budget {budget.limit:g}; on demand {sleepers}; at most "
            f"{awake_together(budget, on_demand)} of them awake at once")


def _listing(budget: Budget, names: Iterable[str], device: str) -> str:
    return ", ".join(f"{name}={budget.share_on(name, device):g}" for name in sorted(names)
                     if device in budget.devices.get(name, ()))


def refusals(settings: Settings, memory_plan: Plan) -> list[str]:
    """What `check-config` and `serve` refuse: the plan's refusals, and with on-demand backends the
    on-demand budget rule in place of the sum of every share (the always-resident part must fit,
    and each on-demand backend beside it)."""
    on_demand = [b.name for b in settings.backends if b.launch and b.launch.on_demand]
    if not on_demand:
        return memory_plan.refusals()
    lines = [f"backend {b.name}: {b.reason}" for b in memory_plan.backends if b.status == "does not fit"]
    shares, _ = plan_figures(memory_plan)
    return lines + [f"gpu.memory_budget: {line}" for line in problems(settings.residency_budget(shares), on_demand)]


__all__ = ["EPSILON", "Budget", "awake_together", "plan_figures", "problems", "refusals", "summary"]
