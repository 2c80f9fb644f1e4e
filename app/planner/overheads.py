"""The fixed costs beside weights and KV cache. These are ESTIMATES, each saying where it comes from.

vLLM measures them at start-up and cannot be asked beforehand (v1/worker/gpu_worker.py
`determine_available_memory`): KV budget = requested - (memory consumed since the baseline
snapshot + the profile run's transient peak) - the CUDA-graph estimate. The planner can only
approximate those terms; the weights and the KV figures are exact, these are not.
"""

from __future__ import annotations

from dataclasses import dataclass

from .architecture import ModelFacts
from .sizes import GIB, MIB


@dataclass(frozen=True)
class Estimate:
    name: str
    bytes: int  # per GPU
    inside_share: bool  # False: on the device but outside gpu_memory_utilization (CUDA context)
    source: str


# The CUDA context: ~400 MB with lazy module loading (CUDA >= 11.7), per PyTorch's maintainers
# (pytorch/pytorch#109888, #107667); rounded up for the cuBLAS/NCCL set-up done before vLLM's
# baseline snapshot. vLLM takes that snapshot after creating the context (gpu_worker.py
# init_device -> init_snapshot), so it is not charged to the share but occupies the device.
CUDA_CONTEXT = 512 * MIB
# Memory vLLM's profile sees grow outside PyTorch (cuBLAS workspaces, attention-backend buffers,
# NCCL): vLLM's own log line reads "non_torch_memory takes 0.33GiB" for a 10.8 GiB model
# (vllm-project/vllm#14452).
NON_TORCH = int(0.33 * GIB)
# CUDA graphs, estimated by vLLM itself and taken from the share since v0.21.0
# (VLLM_MEMORY_PROFILER_ESTIMATE_CUDAGRAPHS=1): its logs report "Estimated CUDA graph memory:
# 0.36 GiB" and "0.58 GiB" for mid-sized models (gpustack/runner#251, wtdcode/vllm-backport#34).
CUDA_GRAPHS = 512 * MIB


def default_batched_tokens(device_total: int | None) -> int:
    """vLLM's default --max-num-batched-tokens for the API server (engine/arg_utils.py)."""
    if device_total is not None and device_total >= 160 * GIB:
        return 16384
    if device_total is not None and device_total >= 70 * GIB:
        return 8192
    return 2048


def default_max_seqs(device_total: int | None) -> int:
    return 1024 if device_total is not None and device_total >= 70 * GIB else 256


def estimates(facts: ModelFacts, *, dtype_bytes: int, tensor_parallel: int, batched_tokens: int, max_seqs: int,
              enforce_eager: bool, pooling: bool) -> list[Estimate]:
    """Per GPU. The activation figure follows what vLLM's profile run does (gpu_model_runner.py
    `profile_run`): `batched_tokens` tokens through one layer at a time (residual, q/k/v and
    output, the MLP's gate/up/product), then the sampler on min(max_num_seqs, tokens) rows of
    logits with its float32 copies (probabilities, top-k/top-p sort); pooling models skip it."""
    hidden = facts.hidden_size
    inter = facts.intermediate_size // tensor_parallel
    layer_peak = batched_tokens * (4 * hidden + 3 * inter) * dtype_bytes
    rows = min(max_seqs, batched_tokens)
    sampler = 0 if pooling else rows * (facts.vocab_size // tensor_parallel) * (dtype_bytes + 8)
    return [
        Estimate("CUDA context", CUDA_CONTEXT, False,
                 "estimate: ~400 MB per PyTorch (pytorch#109888) rounded up; outside the share, vLLM's "
                 "baseline is taken after it"),
        Estimate("non-torch buffers", NON_TORCH, True,
                 "estimate: 0.33 GiB, vLLM's logged non_torch_memory for a 10.8 GiB model (vllm#14452)"),
        Estimate("activation peak", layer_peak + sampler, True,
                 f"estimate: the profile run's peak for {batched_tokens} batched tokens"
                 + ("" if pooling else f" and {rows} sampled rows")),
        Estimate("CUDA graphs", 0 if enforce_eager else CUDA_GRAPHS, True,
                 "none: --enforce-eager" if enforce_eager else
                 "estimate: 0.5 GiB; vLLM logs 0.36-0.58 GiB (gpustack/runner#251, vllm-backport#34)"),
    ]
