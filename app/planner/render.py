"""The plan for people (one line per backend, or the `plan` table) and for programs (JSON).

A `~` marks a figure that rests on the fixed-cost estimates: the KV bytes left inside a given
fraction, and the tokens and sequences they buy. With `gpu_memory_utilization: auto` or an explicit
`--kv-cache-memory-bytes` vLLM is told the KV bytes, so those figures carry no `~`.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from .plan import BackendPlan, Plan
from .sizes import GIB, KIB


def _gib(size: int | None, approx: bool = False) -> str:
    if size is None:
        return "-"
    return f"{'~' if approx else ''}{size / GIB:.2f} GiB"


def _count(value: int | None, approx: bool = False) -> str:
    return "-" if value is None else f"{'~' if approx else ''}{value:,}"


def _share(plan: BackendPlan) -> str:
    if plan.share is None:
        return "auto" if plan.share_source.startswith("auto") else "-"
    mark = {"auto": " (auto)", "auto: what is left of the budget": " (left)", "vLLM default": " (default)"}
    return f"{plan.share:g}{mark.get(plan.share_source, '')}"


def plan_line(plan: BackendPlan) -> str:
    """One line for `check-config` and the start-up log."""
    if plan.status == "unknown":
        facts = []
        if plan.weights_bytes is not None:
            facts.append(f"weights {_gib(plan.weights_bytes, not plan.weights_exact)}")
        if plan.kv_bytes_per_token and plan.kv_exact and plan.kv_tokens is not None:  # --kv-cache-memory-bytes given
            facts.append(f"KV {_gib(plan.kv_bytes)} = {_count(plan.kv_tokens)} tokens at "
                         f"{plan.kv_bytes_per_token / KIB:.1f} KiB/token")
        elif plan.kv_bytes_per_token:
            one = f" (one {plan.max_model_len:,}-token sequence {_gib(plan.one_sequence_bytes)})" \
                if plan.max_model_len and plan.one_sequence_bytes else ""
            facts.append(f"KV {plan.kv_bytes_per_token / KIB:.1f} KiB/token{one}")
        elif plan.facts.get("attention") == "none":
            facts.append("no KV cache (encoder-only)")
        if plan.estimates and plan.weights_bytes is not None:
            facts.append(f"estimates {_gib(plan.estimated_bytes)}")
        if plan.share is not None:
            facts.append(f"share {_share(plan)}")
        return f"plan: unknown ({plan.reason})" + (f"; {', '.join(facts)}" if facts else "")
    approx = not plan.kv_exact
    parts = [f"plan: {plan.status}", f"share {_share(plan)}",
             f"weights {_gib(plan.weights_bytes, not plan.weights_exact)}", f"estimates {_gib(plan.estimated_bytes)}"]
    if plan.kv_bytes_per_token:
        parts.append(f"KV {_gib(plan.kv_bytes, approx)} = {_count(plan.kv_tokens, approx)} tokens "
                     f"at {plan.kv_bytes_per_token / KIB:.1f} KiB/token")
        if plan.sequences is not None and plan.max_model_len:
            parts.append(f"{_count(plan.sequences, approx)} x {plan.max_model_len:,}-token sequences at once")
    elif plan.facts.get("attention") == "none":
        parts.append("no KV cache (encoder-only)")
    if plan.kv_bytes_passed:
        parts.append(f"passes --kv-cache-memory-bytes {plan.kv_cache_memory_bytes}")
    line = ", ".join(parts)
    return f"{line}: {plan.reason}" if plan.reason else line


def plan_table(plan: Plan) -> str:
    """The `vllm-gateway plan` table: per device, its backends, and the sum against the budget."""
    out: list[str] = []
    header = ("backend", "model", "share", "weights", "KV/token", "KV cache", "KV tokens", "sequences", "estimates",
              "status")
    for device in plan.devices:
        if device.total is not None and device.budget_bytes is not None:
            out.append(f"GPU {device.device}: {_gib(device.total)} total, budget {plan.budget:g} = "
                       f"{_gib(device.budget_bytes)}")
        else:
            out.append(f"GPU {device.device}: total unknown")
        rows = [header]
        for name in device.backends:
            b = plan.backend(name)
            approx = not b.kv_exact
            seqs = "-" if b.sequences is None or not b.max_model_len else \
                f"{_count(b.sequences, approx)} x {b.max_model_len:,}"
            rows.append((b.name, b.model, _share(b), _gib(b.weights_bytes, not b.weights_exact),
                         "-" if b.kv_bytes_per_token is None else
                         ("none" if b.kv_bytes_per_token == 0 else f"{b.kv_bytes_per_token / KIB:.1f} KiB"),
                         _gib(b.kv_bytes, approx) if b.kv_bytes_per_token else "-",
                         _count(b.kv_tokens, approx) if b.kv_bytes_per_token else "-", seqs,
                         _gib(b.estimated_bytes) if b.estimates else "-", b.status))
        shares = sum(plan.backend(n).share or 0 for n in device.backends
                     if plan.backend(n).share_source != "vLLM default")
        used = f"{_gib(device.reserved_bytes)} of {_gib(device.budget_bytes)} budget" \
            if device.reserved_bytes is not None and device.budget_bytes is not None else "-"
        rows.append(("sum", "", f"{shares:g}", "", "", "", "", "", "",
                     "over budget" if device.missing_bytes else used))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        for row in rows:
            out.append("  " + "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        out.append(f"  + {_gib(device.outside_bytes)} of CUDA contexts outside the shares (estimate)")
        out.extend(f"  note: {note}" for note in device.notes)
    for b in plan.backends:
        for note in ([b.reason] if b.reason else []) + list(b.notes):
            out.append(f"{b.name}: {note}")
    estimates = {e.name: e.source for b in plan.backends for e in b.estimates}
    if estimates:
        out.append("estimates (not measured here; vLLM measures its own at start-up):")
        out.extend(f"  {name}: {source}" for name, source in estimates.items())
    out.append("~ : depends on those estimates; weights, KV/token and the tokens of a given KV size are exact")
    return "\n".join(out)


def plan_json(plan: Plan) -> dict[str, Any]:
    return {
        "budget": plan.budget,
        "devices": [asdict(d) for d in plan.devices],
        "backends": [{**asdict(b), "estimated_bytes": b.estimated_bytes, "line": plan_line(b)} for b in plan.backends],
        "refusals": plan.refusals(),
    }
