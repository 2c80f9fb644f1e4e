"""The `/status` document: the gateway's documented, versioned data model (README, "The /status
data model"). The operator page reads the same document (`ui.feed`), `vllm-gateway status`
prints it as a table.

`SCHEMA_VERSION` grows when a field changes meaning or goes away; new fields do not change it,
so readers ignore fields they do not know.
"""

from __future__ import annotations

import time
from typing import Any

from .. import __version__
from ..gpu.telemetry import GpuSnapshot
from ..planner.plan import BackendPlan
from ..planner.render import plan_line
from ..routing.backend import Backend

SCHEMA_VERSION = 1


def memory_status(plan: BackendPlan) -> dict[str, Any]:
    """A backend's memory plan as /status shows it (what `vllm-gateway plan` prints, as figures)."""
    return {"status": plan.status, "reason": plan.reason or None, "line": plan_line(plan), "share": plan.share,
            "share_source": plan.share_source, "devices": list(plan.devices), "weights_bytes": plan.weights_bytes,
            "kv_bytes_per_token": plan.kv_bytes_per_token, "kv_bytes": plan.kv_bytes, "kv_tokens": plan.kv_tokens,
            "sequences": plan.sequences, "max_model_len": plan.max_model_len, "estimated_bytes": plan.estimated_bytes}


def gpus_status(snapshot: GpuSnapshot | None) -> list[dict[str, Any]]:
    """Each GPU as NVML last read it (empty until the first reading)."""
    if snapshot is None:
        return []
    return [{"index": d.index, "uuid": d.uuid, "name": d.name, "total_bytes": d.total_bytes, "used_bytes": d.used_bytes,
             "utilization": d.utilization, "by_backend": dict(d.by_backend),
             "foreign": [{"pid": pid, "bytes": held} for pid, held in d.foreign]} for d in snapshot.devices]


def traffic_status(backend: Backend, state: Any) -> dict[str, Any]:
    """Requests in flight and waiting now, and the last minute (`ui.traffic`; null without the page)."""
    traffic: dict[str, Any] = {"in_flight": sum(u.outstanding for u in backend.upstreams),
               "waiting": backend.limit.waiting if backend.limit is not None else 0}
    activity = state.activity
    if activity is not None:
        traffic.update(activity.traffic.last_minute(backend.name))
    else:
        traffic.update(requests_per_s=None, errors_per_s=None, p50_s=None, p99_s=None, window_s=None)
    return traffic


def status_document(state: Any, *, engine: bool = False) -> dict[str, Any]:
    """Everything `/status` shows, from the parts on `app.state`; `engine`: each backend's own
    vLLM figures as last read (`ui.vllm_stats`), which the caller refreshed."""
    telemetry = state.gpu_telemetry
    snapshot = telemetry.latest if telemetry is not None else None
    plans = {b.name: b for b in state.plan.backends} if state.plan is not None else {}
    stats = state.engine_stats
    backends = []
    for backend in state.registry.backends.values():
        info = backend.status()
        planned = plans.get(backend.name)
        if planned is not None:
            info["memory"] = memory_status(planned)
        if snapshot is not None and backend.launched:
            info["gpu_memory_bytes"] = snapshot.backend_memory(backend.name)
        info["traffic"] = traffic_status(backend, state)
        if engine:
            info["engine"] = stats.of(backend.name) if stats is not None else None
        backends.append(info)
    return {
        "schema_version": SCHEMA_VERSION,
        "version": __version__,
        "time": round(time.time(), 3),
        "shutting_down": state.shutting_down,
        "gpu_budget": state.settings.gpu.memory_budget,
        "backends": backends,
        "gpus": gpus_status(snapshot) if telemetry is not None else None,
        "residency": state.residency.status() if state.residency is not None else None,
    }


__all__ = ["SCHEMA_VERSION", "gpus_status", "memory_status", "status_document", "traffic_status"]
