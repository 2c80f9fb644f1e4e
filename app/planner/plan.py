"""The memory plan: what each launched backend's share buys, or what its target costs, per device.

A backend's numbers are per GPU (under tensor parallelism every rank holds 1/TP of the weights
and of the KV heads). Exact: weights (safetensors headers), KV bytes per token and per block,
and the tokens a given KV byte budget buys. Estimated: the fixed costs (overheads.py), hence the
KV budget left inside a fractional share. With `gpu_memory_utilization: auto` the planner
computes the KV bytes for the target and passes them as `--kv-cache-memory-bytes`, so the cache
vLLM builds is exactly the planned one and only the share's headroom rests on estimates.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Literal

from ..settings import BackendConfig, LaunchConfig, Settings
from ..vllm_args import BadLaunchArgs, VllmFlags, read_flags
from .architecture import DTYPE_BYTES, MissingField, ModelFacts, UnsupportedModel, model_facts
from .kv_cache import KvLayout, kv_dtype_bytes, kv_layout
from .model_files import ModelFiles, ModelUnavailable, read_model_files
from .overheads import Estimate, default_batched_tokens, default_max_seqs, estimates
from .sizes import gib
from .weights import loaded

VLLM_DEFAULT_SHARE = 0.92  # vLLM 0.33's --gpu-memory-utilization default (0.9 up to 0.11)
MLA_BLOCK_SIZE = 64  # FlashMLA's block size, which vLLM picks for MLA models on Hopper GPUs
Status = Literal["fits", "does not fit", "unknown"]
Reader = Callable[..., ModelFiles]


class PlanError(ValueError):
    """Input `vllm-gateway plan` cannot plan; one line naming the backend and what to change."""


@dataclass(frozen=True)
class BackendPlan:
    name: str
    model: str
    status: Status
    reason: str  # why unknown / what is missing; "" when it fits
    devices: tuple[str, ...]
    tensor_parallel: int = 1
    target: str = ""  # "share 0.60", "auto: 4 x 32768-token sequences", "auto: 100000 tokens", ...
    share: float | None = None  # of each device's total: given, computed (auto) or vLLM's default
    share_source: str = ""  # "given", "auto", "vLLM default", "auto: what is left of the budget"
    kv_cache_memory_bytes: int | None = None  # --kv-cache-memory-bytes: given in args, or computed (auto)
    kv_bytes_passed: bool = False  # True when the planner adds --kv-cache-memory-bytes itself
    max_model_len: int | None = None
    weights_bytes: int | None = None  # per GPU
    weights_exact: bool = True
    weights_source: str = ""
    kv_bytes_per_token: int | None = None  # per GPU, every attention layer
    block_size: int | None = None
    bytes_per_block: int | None = None
    kv_bytes: int | None = None  # per GPU
    kv_exact: bool = False  # True when vLLM is told the bytes (given or auto), False when left to its profiling
    kv_blocks: int | None = None
    kv_tokens: int | None = None
    sequences: int | None = None  # full max_model_len sequences at once
    concurrency: float | None = None  # vLLM's "Maximum concurrency" figure; x max_model_len = its logged tokens
    one_sequence_bytes: int | None = None
    estimates: tuple[Estimate, ...] = ()
    need_bytes: int | None = None  # inside the share, per GPU: weights + estimates + KV
    reserved_bytes: int | None = None  # per device: what the budget is charged
    missing_bytes: int | None = None
    notes: tuple[str, ...] = ()
    facts: dict[str, object] = field(default_factory=dict)

    @property
    def estimated_bytes(self) -> int:
        return sum(e.bytes for e in self.estimates if e.inside_share)

    @property
    def outside_share_bytes(self) -> int:
        return sum(e.bytes for e in self.estimates if not e.inside_share)


@dataclass(frozen=True)
class DevicePlan:
    device: str
    total: int | None
    budget_bytes: int | None
    backends: tuple[str, ...]
    reserved_bytes: int | None  # the shares (and fixed KV footprints) summed
    outside_bytes: int  # CUDA contexts, estimated, outside every share
    missing_bytes: int | None  # over the budget by this much
    notes: tuple[str, ...] = ()


@dataclass(frozen=True)
class Plan:
    budget: float
    backends: tuple[BackendPlan, ...]
    devices: tuple[DevicePlan, ...]

    def backend(self, name: str) -> BackendPlan:
        return next(b for b in self.backends if b.name == name)

    def refusals(self) -> list[str]:
        """One line per plan that cannot fit: the backend, and the bytes missing."""
        lines = [f"backend {b.name}: {b.reason}" for b in self.backends if b.status == "does not fit"]
        for d in self.devices:
            if d.missing_bytes and d.budget_bytes is not None and d.reserved_bytes is not None:
                lines.append(f"GPU {d.device}: backends {', '.join(d.backends)} reserve {gib(d.reserved_bytes)}, "
                             f"{gib(d.missing_bytes)} ({d.missing_bytes:,} bytes) over the budget of "
                             f"{gib(d.budget_bytes)}; lower a share or a target, or raise gpu.memory_budget")
        return lines


def build_plan(settings: Settings, *, device_memory: Mapping[str, int] | None = None,
               default_memory: int | None = None, reader: Reader = read_model_files,
               allow_network: bool = False, env: Mapping[str, str] | None = None, strict: bool = False) -> Plan:
    """Plan every launched backend. `device_memory` maps device labels (CUDA_VISIBLE_DEVICES
    entries, NVML indexes) to their total bytes; `default_memory` is used for any other device
    (`--gpu-memory`, `gpu.memory`). `strict` (the `plan` command) raises PlanError for a backend
    whose plan is unknown (unreadable files, missing fields), which `check-config` and `serve`
    only report; a plan that does not fit is in `Plan.refusals()` either way."""
    base_env = dict(os.environ if env is None else env)
    totals = dict(device_memory or {})
    plans = []
    for backend in settings.backends:
        if backend.launch is None:
            continue
        plans.append(_plan_one(backend, base_env, totals, default_memory, reader, allow_network))
    plans, devices = _per_device(plans, settings.gpu.memory_budget, totals, default_memory)
    if strict:
        for b in plans:
            if b.status == "unknown":
                raise PlanError(f"backend {b.name}: {b.reason}")
    return Plan(settings.gpu.memory_budget, tuple(plans), tuple(devices))


def launch_flags(plan: BackendPlan) -> list[str]:
    """The vLLM flags `serve` adds for an `auto` backend: the computed share, and the exact KV bytes."""
    if plan.share_source not in ("auto", "auto: what is left of the budget") or plan.share is None:
        return []
    flags = ["--gpu-memory-utilization", f"{plan.share:g}"]
    if plan.kv_bytes_passed and plan.kv_cache_memory_bytes:
        flags += ["--kv-cache-memory-bytes", str(plan.kv_cache_memory_bytes)]
    return flags


def planned_backend(backend: BackendConfig, plan: BackendPlan) -> BackendConfig:
    """The backend as `serve` should launch it: an `auto` share replaced by the planned fraction and
    `--kv-cache-memory-bytes` appended to its args; any other backend unchanged."""
    flags = launch_flags(plan)
    if not flags or backend.launch is None:
        return backend
    launch = backend.launch.model_copy(update={"gpu_memory_utilization": float(flags[1]),
                                               "args": [*backend.launch.args, *flags[2:]]})
    return backend.model_copy(update={"launch": launch})


# -- one backend ----------------------------------------------------------------------------------

def _plan_one(backend: BackendConfig, base_env: dict[str, str], totals: dict[str, int], default_memory: int | None,
              reader: Reader, allow_network: bool) -> BackendPlan:
    launch = backend.launch
    assert launch is not None
    env = {**base_env, **launch.env}
    unknown = _unknown_factory(backend, env)
    try:
        flags = read_flags(launch.args)
    except BadLaunchArgs as exc:
        return unknown(str(exc))
    tp = flags.tensor_parallel_size
    try:
        devices = _devices(env, tp)
    except ValueError as exc:
        return unknown(str(exc))
    share_setting = flags.gpu_memory_utilization if flags.gpu_memory_utilization is not None \
        else launch.gpu_memory_utilization
    base = BackendPlan(backend.name, launch.model, "unknown", "", devices, tp, _target(launch, share_setting))
    base = _with_share(base, share_setting)
    if flags.pipeline_parallel_size > 1 or flags.data_parallel_size > 1:
        return replace(base, reason="pipeline or data parallelism: the planner only plans tensor parallelism; "
                                    "give gpu_memory_utilization as a fraction")
    try:
        files = reader(launch.model, env=env, revision=flags.revision, allow_network=allow_network)
    except ModelUnavailable as exc:
        return replace(base, reason=f"model files not readable: {exc}; vLLM may download it at launch "
                                    f"(download config.json and the safetensors files to plan it)")
    try:
        facts = model_facts(files.config)
    except (MissingField, UnsupportedModel) as exc:
        return replace(base, reason=f"{launch.model}: {exc}")
    dev_total = min((totals.get(d, default_memory) or 0 for d in devices), default=0) or None
    try:
        return _plan_known(base, launch.max_model_len, flags, facts, files, dev_total)
    except (MissingField, UnsupportedModel) as exc:
        return replace(base, reason=f"{launch.model}: {exc}")


def _unknown_factory(backend: BackendConfig, env: dict[str, str]) -> Callable[[str], BackendPlan]:
    assert backend.launch is not None
    model = backend.launch.model

    def make(reason: str) -> BackendPlan:
        return BackendPlan(backend.name, model, "unknown", reason, ())

    return make


def _target(launch: LaunchConfig, share: float | str | None) -> str:
    if share == "auto":
        if launch.concurrent_sequences:
            return f"auto: {launch.concurrent_sequences} x {launch.max_model_len}-token sequences"
        return f"auto: {launch.kv_cache_tokens} KV tokens"
    if isinstance(share, float):
        return f"share {share:g}"
    return f"share {VLLM_DEFAULT_SHARE:g} (vLLM's default)"


def _with_share(plan: BackendPlan, share: float | str | None) -> BackendPlan:
    if isinstance(share, float):
        return replace(plan, share=share, share_source="given")
    if share == "auto":
        return replace(plan, share_source="auto")
    return replace(plan, share=VLLM_DEFAULT_SHARE, share_source="vLLM default")


def _plan_known(base: BackendPlan, launch_len: int | None, flags: VllmFlags, facts: ModelFacts, files: ModelFiles,
                total: int | None) -> BackendPlan:
    notes: list[str] = []
    length = flags.max_model_len or launch_len or facts.max_position_embeddings
    if flags.max_model_len_auto:
        notes.append("--max-model-len auto: vLLM fits the longest length the cache allows")
    if not length:
        raise MissingField("no max_model_len (set launch.max_model_len, or config.json max_position_embeddings)")
    if not (flags.max_model_len or launch_len):
        notes.append(f"max_model_len {length} from config.json (vLLM's default)")
    dtype_bytes = _serving_dtype_bytes(flags.dtype, facts)
    kv_el = kv_dtype_bytes(flags.kv_cache_dtype, dtype_bytes)
    mla = facts.attention.kind == "mla"
    block = flags.block_size or (MLA_BLOCK_SIZE if mla else 16)
    if mla and not flags.block_size:
        notes.append(f"MLA: block size {MLA_BLOCK_SIZE} (FlashMLA's; --block-size pins it)")
    sliding_as_full = flags.disable_sliding_window or flags.disable_hybrid_kv_cache_manager
    layout = kv_layout(facts.attention, dtype_bytes=kv_el, tensor_parallel=base.tensor_parallel, block_size=block,
                       sliding_as_full=sliding_as_full)
    pooling = facts.pooling or flags.runner == "pooling" or flags.convert in ("embed", "classify")
    batched = flags.max_num_batched_tokens or default_batched_tokens(total)
    if pooling and not flags.max_num_batched_tokens:
        batched = max(batched, length)  # pooling runs whole prompts (no chunked prefill)
    in_flight = 2 * batched  # vLLM's max_in_flight_tokens: 2 concurrent batches with async scheduling
    if layout.hybrid or any(g.window for g in layout.groups):
        notes.append(f"sliding-window layers hold window - 1 + {in_flight} in-flight tokens per sequence "
                     f"(2 x max_num_batched_tokens, an estimate of vLLM's scheduler)")
    if facts.attention.note:
        notes.append(facts.attention.note)
    costs = tuple(estimates(facts, dtype_bytes=dtype_bytes, tensor_parallel=base.tensor_parallel,
                            batched_tokens=batched, max_seqs=flags.max_num_seqs or default_max_seqs(total),
                            enforce_eager=flags.enforce_eager, pooling=pooling))
    plan = replace(base, max_model_len=length, kv_bytes_per_token=layout.bytes_per_token, block_size=block,
                   bytes_per_block=layout.bytes_per_block or None, estimates=costs, facts=_facts_json(facts, layout))
    one = layout.bytes_for(1, length, in_flight) if layout.has_cache else 0
    plan = replace(plan, one_sequence_bytes=one)
    if files.weights is None:
        return replace(plan, reason=f"{base.model}: no safetensors files, so the weights' size is unknown (only "
                                    f"safetensors headers or model.safetensors.index.json give it)",
                       notes=tuple(notes))
    weights = loaded(files.weights, facts, dtype_bytes, base.tensor_parallel)
    if weights.note:
        notes.append(f"weights: {weights.note}")
    plan = replace(plan, weights_bytes=weights.per_gpu_bytes, weights_exact=weights.exact,
                   weights_source=files.weights.source)
    fixed = weights.per_gpu_bytes + plan.estimated_bytes
    if base.share_source == "auto":
        return _plan_auto(plan, layout, fixed, one, in_flight, total, notes)
    return _plan_share(plan, layout, fixed, one, in_flight, total, flags, notes)


def _plan_auto(plan: BackendPlan, layout: KvLayout, fixed: int, one: int, in_flight: int, total: int | None,
               notes: list[str]) -> BackendPlan:
    length = plan.max_model_len or 0
    if plan.target.startswith("auto: ") and "sequences" in plan.target:
        count = int(plan.target.split()[1])
        kv = layout.bytes_for(count, length, in_flight) if layout.has_cache else 0
    else:
        tokens = int(plan.target.split()[1])
        kv = layout.bytes_for_tokens(tokens) if layout.has_cache else 0
        if layout.has_cache and kv < one:
            reason = (f"kv_cache_tokens {tokens} cannot hold one {length}-token sequence (needs "
                      f"{layout.tokens(one):,} tokens); raise kv_cache_tokens or lower max_model_len")
            return replace(plan, status="does not fit", reason=reason, missing_bytes=one - kv, notes=tuple(notes))
    plan = _with_kv(plan, layout, kv, exact=True, length=length, in_flight=in_flight)
    plan = replace(plan, kv_cache_memory_bytes=kv or None, kv_bytes_passed=bool(kv), need_bytes=fixed + kv)
    if not total:
        return replace(plan, reason=_no_memory(), notes=tuple(notes))
    share = math.ceil((fixed + kv) / total * 1000) / 1000
    if share > 1:
        missing = fixed + kv - total
        reason = (f"{plan.target} needs {gib(fixed + kv)} per GPU, more than the GPU's {gib(total)}: "
                  f"{gib(missing)} ({missing:,} bytes) missing; lower the target or max_model_len")
        return replace(plan, status="does not fit", reason=reason, missing_bytes=missing, notes=tuple(notes))
    return replace(plan, status="fits", share=share, reserved_bytes=math.ceil(share * total), notes=tuple(notes))


def _plan_share(plan: BackendPlan, layout: KvLayout, fixed: int, one: int, in_flight: int, total: int | None,
                flags: VllmFlags, notes: list[str]) -> BackendPlan:
    length = plan.max_model_len or 0
    share = plan.share or VLLM_DEFAULT_SHARE
    if flags.kv_cache_memory_bytes is not None:  # vLLM takes these bytes, whatever the share says
        kv = flags.kv_cache_memory_bytes
        plan = _with_kv(plan, layout, kv, exact=True, length=length, in_flight=in_flight)
        plan = replace(plan, kv_cache_memory_bytes=kv, need_bytes=fixed + (kv if layout.has_cache else 0))
        if layout.has_cache and kv < one:
            missing = one - kv
            reason = (f"--kv-cache-memory-bytes {kv:,} cannot hold one {length}-token sequence "
                      f"({gib(one)}): {gib(missing)} ({missing:,} bytes) missing; raise it or lower max_model_len")
            return replace(plan, status="does not fit", reason=reason, missing_bytes=missing, notes=tuple(notes))
        if plan.share_source == "vLLM default":
            notes.append(f"vLLM still checks at start that {VLLM_DEFAULT_SHARE:g} of the GPU is free "
                         f"(its default share); set gpu_memory_utilization when the GPU is shared")
        reserved = None
        if total and plan.share_source != "vLLM default":
            reserved = max(math.ceil(share * total), plan.need_bytes or 0)
            if plan.need_bytes and plan.need_bytes > share * total:
                notes.append(f"needs ~{gib(plan.need_bytes)}, more than its share of {gib(share * total)}")
        return replace(plan, status="fits" if total else "unknown", reserved_bytes=reserved,
                       reason="" if total else _no_memory(), notes=tuple(notes))
    if not total:
        return replace(plan, reason=_no_memory(), need_bytes=fixed + one, notes=tuple(notes))
    requested = math.ceil(share * total)
    kv = requested - fixed
    plan = _with_kv(plan, layout, max(kv, 0), exact=False, length=length, in_flight=in_flight)
    plan = replace(plan, need_bytes=fixed + max(kv, 0),
                   reserved_bytes=requested if plan.share_source != "vLLM default" else None)
    if kv < one or kv <= 0:
        missing = one - kv if layout.has_cache else -kv
        reason = (f"share {share:g} of {gib(total)} is {gib(requested)}, but weights ({gib(fixed - plan.estimated_bytes)})"
                  f" + estimated fixed costs ({gib(plan.estimated_bytes)})"
                  + (f" + one {length}-token sequence ({gib(one)})" if layout.has_cache else "")
                  + f" need {gib(fixed + one)}: {gib(missing)} ({missing:,} bytes) missing; raise the share or "
                    f"lower max_model_len")
        return replace(plan, status="does not fit", reason=reason, missing_bytes=missing, notes=tuple(notes))
    return replace(plan, status="fits", notes=tuple(notes))


def _with_kv(plan: BackendPlan, layout: KvLayout, kv: int, *, exact: bool, length: int, in_flight: int) -> BackendPlan:
    if not layout.has_cache:
        return replace(plan, kv_bytes=0, kv_exact=exact, kv_blocks=1, kv_tokens=0, sequences=None)
    return replace(plan, kv_bytes=kv, kv_exact=exact, kv_blocks=layout.blocks(kv), kv_tokens=layout.tokens(kv),
                   sequences=layout.sequences(kv, length, in_flight),
                   concurrency=layout.concurrency(kv, length, in_flight))


def _no_memory() -> str:
    return "GPU memory unknown (NVML sees no GPU here): set gpu.memory, or give `vllm-gateway plan --gpu-memory`"


def _serving_dtype_bytes(dtype: str, facts: ModelFacts) -> int:
    """vLLM's --dtype: auto keeps a 16-bit checkpoint's dtype and runs a float32 one in 16 bits
    (config/model.py `_resolve_auto_dtype`); an explicit dtype is what it says."""
    if dtype != "auto":
        size = DTYPE_BYTES.get(dtype)
        if size is None:
            raise UnsupportedModel(f"--dtype {dtype} is not one vLLM knows (auto, half, float16, bfloat16, float, float32)")
        return size
    declared = DTYPE_BYTES.get(facts.dtype or "", 2)
    return 2 if declared >= 4 else declared


def _devices(env: Mapping[str, str], tensor_parallel: int) -> tuple[str, ...]:
    """The devices a backend's ranks use: the first `tensor_parallel` of its CUDA_VISIBLE_DEVICES."""
    visible = env.get("CUDA_VISIBLE_DEVICES")
    if visible is None or not visible.strip():
        return tuple(str(i) for i in range(tensor_parallel))
    ids = [part.strip() for part in visible.split(",") if part.strip()]
    if len(ids) < tensor_parallel:
        raise ValueError(f"--tensor-parallel-size {tensor_parallel} but CUDA_VISIBLE_DEVICES={visible} lists "
                         f"{len(ids)} device(s); list {tensor_parallel}")
    return tuple(ids[:tensor_parallel])


def _facts_json(facts: ModelFacts, layout: KvLayout) -> dict[str, object]:
    attention = facts.attention
    return {
        "model_type": facts.model_type, "architectures": list(facts.architectures), "dtype": facts.dtype,
        "quantization": facts.quantization, "attention": attention.kind, "attention_layers": attention.layers,
        "sliding_layers": attention.sliding_layers, "kv_heads": attention.total_kv_heads,
        "kv_heads_per_gpu": layout.heads_per_gpu, "head_size": attention.head_size,
        "head_size_v": attention.head_size_v, "kv_dtype_bytes": layout.dtype_bytes,
        "kv_cache_groups": [{"layers": g.layers, "sliding_window": g.window} for g in layout.groups],
    }


# -- devices --------------------------------------------------------------------------------------

def _per_device(plans: list[BackendPlan], budget: float, totals: dict[str, int],
                default_memory: int | None) -> tuple[list[BackendPlan], list[DevicePlan]]:
    """Sum what each device's backends reserve; give `auto` backends with unknown plans what is left."""
    labels: list[str] = []
    for p in plans:
        labels.extend(d for d in p.devices if d not in labels)
    plans = list(plans)
    for label in labels:
        total = totals.get(label, default_memory)
        if not total:
            continue
        here = [i for i, p in enumerate(plans) if label in p.devices]
        left_for = [i for i in here if plans[i].share_source == "auto" and plans[i].status == "unknown"]
        if not left_for:
            continue
        known = sum(_reserved(plans[i], total) or 0 for i in here if i not in left_for)
        share = math.floor((budget * total - known) / len(left_for) / total * 1000) / 1000
        for i in left_for:
            p = plans[i]
            if share <= 0:
                plans[i] = replace(p, share=None, reason=p.reason + "; and nothing is left of the budget for it")
                continue
            plans[i] = replace(p, share=share if p.share is None else min(p.share, share),
                               share_source="auto: what is left of the budget",
                               notes=(*p.notes, f"plan unknown, so it gets what is left of the budget: {share:g}"))
    devices = []
    for label in labels:
        total = totals.get(label, default_memory)
        names = tuple(p.name for p in plans if label in p.devices)
        outside = sum(p.outside_share_bytes or 512 * 2**20 for p in plans if label in p.devices)
        if not total:
            devices.append(DevicePlan(label, None, None, names, None, outside, None,
                                      ("GPU memory unknown: no totals, no budget check",)))
            continue
        reserved = [_reserved(p, total) for p in plans if label in p.devices]
        known = sum(r for r in reserved if r is not None)
        budget_bytes = int(budget * total)
        missing = known - budget_bytes if known > budget_bytes else None
        notes = []
        if known + outside > total:
            notes.append(f"the shares plus ~{gib(outside)} of CUDA contexts (estimate) exceed the GPU's {gib(total)}")
        unset = [p.name for p in plans if label in p.devices and p.share_source == "vLLM default"]
        if unset:
            notes.append(f"{', '.join(unset)}: no gpu_memory_utilization, so vLLM's default "
                         f"{VLLM_DEFAULT_SHARE:g} applies; not counted against the budget")
        devices.append(DevicePlan(label, total, budget_bytes, names, known, outside, missing, tuple(notes)))
    return plans, devices


def _reserved(plan: BackendPlan, total: int) -> int | None:
    """What the budget is charged; nothing for a backend without a share (as before the planner:
    vLLM's default applies and the configuration never said otherwise)."""
    if plan.share_source == "vLLM default":
        return None
    if plan.reserved_bytes is not None:
        return plan.reserved_bytes
    if plan.share is not None:
        return math.ceil(plan.share * total)
    return None
