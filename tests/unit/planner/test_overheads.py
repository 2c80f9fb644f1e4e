"""The fixed-cost estimates: which are inside the share, and how vLLM's defaults pick their inputs."""

from __future__ import annotations

from tests.unit.planner.published import config
from vllm_gateway.planner.architecture import model_facts
from vllm_gateway.planner.overheads import (
    CUDA_CONTEXT,
    CUDA_GRAPHS,
    NON_TORCH,
    default_batched_tokens,
    default_max_seqs,
    estimates,
)

GIB = 2**30


def test_vllm_defaults_by_device_size() -> None:
    assert [default_batched_tokens(t) for t in (None, 48 * 10**9, 80 * GIB, 192 * GIB)] == [2048, 2048, 8192, 16384]
    assert [default_max_seqs(t) for t in (48 * 10**9, 80 * GIB)] == [256, 1024]


def test_every_estimate_says_where_it_comes_from_and_the_context_is_outside_the_share() -> None:
    costs = {e.name: e for e in estimates(model_facts(config("qwen3-8b")), dtype_bytes=2, tensor_parallel=1,
                                          batched_tokens=2048, max_seqs=256, enforce_eager=False, pooling=False)}
    assert set(costs) == {"CUDA context", "non-torch buffers", "activation peak", "CUDA graphs"}
    assert all(e.source.startswith("estimate") for e in costs.values())
    assert not costs["CUDA context"].inside_share and costs["CUDA context"].bytes == CUDA_CONTEXT
    assert (costs["non-torch buffers"].bytes, costs["CUDA graphs"].bytes) == (NON_TORCH, CUDA_GRAPHS)
    layer = 2048 * (4 * 4096 + 3 * 12288) * 2
    sampler = 256 * 151936 * (2 + 8)
    assert costs["activation peak"].bytes == layer + sampler


def test_eager_mode_has_no_graphs_and_pooling_no_sampler() -> None:
    costs = {e.name: e for e in estimates(model_facts(config("qwen3-embedding-0.6b")), dtype_bytes=2,
                                          tensor_parallel=1, batched_tokens=8192, max_seqs=256, enforce_eager=True,
                                          pooling=True)}
    assert costs["CUDA graphs"].bytes == 0 and costs["CUDA graphs"].source == "none: --enforce-eager"
    assert costs["activation peak"].bytes == 8192 * (4 * 1024 + 3 * 3072) * 2


def test_tensor_parallel_splits_the_mlp_and_the_vocabulary() -> None:
    one, two = (estimates(model_facts(config("qwen3-8b")), dtype_bytes=2, tensor_parallel=tp, batched_tokens=2048,
                          max_seqs=256, enforce_eager=True, pooling=False)[2].bytes for tp in (1, 2))
    assert two < one
