"""KV-cache bytes per token and per block, and the tokens a byte budget buys, as vLLM computes them.

From vLLM's v1/kv_cache_interface.py and v1/core/kv_cache_utils.py (written here, not copied):
- one layer's page = kv_heads_per_gpu x block_size x (head_size_k + head_size_v) x dtype bytes
  (`AttentionSpec.page_size_bytes`); MLA has head_size_v 0 and one "head", on every TP rank;
- layers with the same spec form groups of equal size (`_get_kv_cache_groups_uniform_page_size`:
  n:1 patterns such as Gemma's sliding/full layers give one group per layer of the pattern); a
  block of the shared pool costs the largest group's layers x page (`_get_kv_cache_bytes_per_block`);
- `num_blocks = budget // bytes_per_block` (`get_kv_cache_config_from_groups`), tokens =
  blocks x block_size; a request of `max_model_len` needs `cdiv(len, block_size)` blocks in
  each full-attention group and `cdiv(min(window - 1 + in_flight, len), block_size) + 1` in
  each sliding-window group (`SlidingWindowSpec.max_admission_blocks_per_request`).
"""

from __future__ import annotations

from dataclasses import dataclass

from .architecture import Attention, UnsupportedModel

_KV_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "half": 2, "float32": 4, "float": 4,
                   "fp8": 1, "fp8_e4m3": 1, "fp8_e5m2": 1, "fp8_inc": 1}


def cdiv(a: int, b: int) -> int:
    return -(a // -b)


def kv_dtype_bytes(kv_cache_dtype: str, model_dtype_bytes: int) -> int:
    """`--kv-cache-dtype`: auto follows the model's dtype; fp8 variants take 1 byte."""
    if kv_cache_dtype == "auto":
        return model_dtype_bytes
    if kv_cache_dtype in _KV_DTYPE_BYTES:
        return _KV_DTYPE_BYTES[kv_cache_dtype]
    raise UnsupportedModel(
        f"--kv-cache-dtype {kv_cache_dtype} packs values and scales in a layout the planner does not model; "
        f"use auto, bfloat16, float16 or fp8, or give gpu_memory_utilization as a fraction")


@dataclass(frozen=True)
class Group:
    layers: int  # layers sharing one block table (padding layers included, as vLLM pads)
    window: int | None  # None: full attention


@dataclass(frozen=True)
class KvLayout:
    """One GPU's view of the model's KV cache."""

    heads_per_gpu: int
    block_size: int
    dtype_bytes: int
    page_bytes: int  # one layer, one block
    groups: tuple[Group, ...]  # empty: no KV cache at all (encoder-only)
    attention_layers: int

    @property
    def has_cache(self) -> bool:
        return bool(self.groups)

    @property
    def bytes_per_token(self) -> int:
        """What one token costs in every attention layer (the figure guides quote: 144 KiB for Qwen3-8B)."""
        return self.attention_layers * self.page_bytes // self.block_size if self.groups else 0

    @property
    def bytes_per_block(self) -> int:
        """The divisor vLLM turns a byte budget into blocks with."""
        return max(g.layers for g in self.groups) * self.page_bytes if self.groups else 0

    @property
    def hybrid(self) -> bool:
        return len(self.groups) > 1

    def blocks(self, budget: int) -> int:
        """vLLM's num_gpu_blocks for `budget` bytes (an attention-free model gets the null block only)."""
        if not self.groups:
            return 1
        return max(0, budget) // self.bytes_per_block

    def tokens(self, budget: int) -> int:
        """Token slots per block table: num_gpu_blocks x block_size (0 when there is no cache)."""
        return self.blocks(budget) * self.block_size if self.groups else 0

    def blocks_per_sequence(self, length: int, in_flight: int) -> int:
        """Blocks one request of `length` tokens holds, summed over the groups."""
        total = 0
        for group in self.groups:
            if group.window is None:
                total += cdiv(length, self.block_size)
            else:
                total += cdiv(min(group.window - 1 + in_flight, length), self.block_size) + 1
        return total

    def sequences(self, budget: int, length: int, in_flight: int) -> int:
        """How many requests of `length` tokens fit in the pool at once."""
        need = self.blocks_per_sequence(length, in_flight)
        return self.blocks(budget) // need if need else 0

    def concurrency(self, budget: int, length: int, in_flight: int) -> float:
        """vLLM's "Maximum concurrency for <length> tokens per request" (`get_max_concurrency_for_kv_cache_config`);
        x `length` it is the "KV cache size: N tokens" vLLM logs."""
        need = self.blocks_per_sequence(length, in_flight)
        return self.blocks(budget) / need if need else 0.0

    def bytes_for(self, sequences: int, length: int, in_flight: int) -> int:
        """The smallest budget that holds `sequences` requests of `length` tokens."""
        return sequences * self.blocks_per_sequence(length, in_flight) * self.bytes_per_block

    def bytes_for_tokens(self, tokens: int) -> int:
        """The smallest budget whose pool has `tokens` slots per block table."""
        return cdiv(tokens, self.block_size) * self.bytes_per_block


def kv_layout(attention: Attention, *, dtype_bytes: int, tensor_parallel: int, block_size: int,
              sliding_as_full: bool = False) -> KvLayout:
    """The layout for one GPU. `sliding_as_full`: `--disable-sliding-window` or
    `--disable-hybrid-kv-cache-manager`, under which vLLM sizes sliding layers like full ones."""
    if attention.kind == "none":
        return KvLayout(0, block_size, dtype_bytes, 0, (), 0)
    if attention.kind == "mla":
        heads = 1  # replicated on every rank, not divided by TP (config/model.py get_num_kv_heads)
    else:
        heads = max(1, attention.total_kv_heads // tensor_parallel)
    page = heads * block_size * (attention.head_size + attention.head_size_v) * dtype_bytes
    windows = [None if sliding_as_full else w for w in attention.windows]
    return KvLayout(heads, block_size, dtype_bytes, page, _groups(windows), attention.layers)


def _groups(windows: list[int | None]) -> tuple[Group, ...]:
    """vLLM's grouping: one group if every layer has the same spec, else equal-sized groups per kind."""
    buckets: dict[int | None, int] = {}
    for window in windows:
        buckets[window] = buckets.get(window, 0) + 1
    if len(buckets) == 1:
        ((window, count),) = buckets.items()
        return (Group(count, window),)
    smallest, largest = min(buckets.values()), max(buckets.values())
    size = largest if largest < smallest * 1.5 else smallest
    groups: list[Group] = []
    for window, count in buckets.items():
        groups.extend(Group(size, window) for _ in range(cdiv(count, size)))
    return tuple(groups)
