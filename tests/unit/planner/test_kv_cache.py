"""Bytes per token and the tokens a budget buys: the published models' figures, and vLLM's rules."""

from __future__ import annotations

import pytest

from tests.unit.planner.published import config
from vllm_gateway.planner.architecture import UnsupportedModel, model_facts
from vllm_gateway.planner.kv_cache import kv_dtype_bytes, kv_layout

KIB = 1024


def layout(name: str, *, tp: int = 1, dtype_bytes: int = 2, block: int = 16, **kw):
    return kv_layout(model_facts(config(name)).attention, dtype_bytes=dtype_bytes, tensor_parallel=tp,
                     block_size=block, **kw)


@pytest.mark.parametrize(("name", "per_token"), [
    ("qwen3-8b", 144 * KIB),
    ("qwen3-0.6b", 112 * KIB),
    ("qwen3-embedding-0.6b", 112 * KIB),
    ("llama-3.1-8b", 128 * KIB),
    ("qwen2.5-7b", 56 * KIB),
    ("mistral-7b-v0.1", 128 * KIB),
    ("deepseek-v2-lite-chat", 27 * 576 * 2),  # MLA: 31,104 B, no factor 2 for K and V
])
def test_published_models_bytes_per_token(name: str, per_token: int) -> None:
    assert layout(name).bytes_per_token == per_token


def test_the_guides_formula_is_four_times_too_high_for_qwen3_8b() -> None:
    cfg = config("qwen3-8b")
    naive = cfg["num_hidden_layers"] * 2 * cfg["hidden_size"] * 2  # layers x 2 x hidden x 2 bytes
    assert naive == 576 * KIB and naive == 4 * layout("qwen3-8b").bytes_per_token


def test_tokens_for_a_budget_are_whole_blocks() -> None:
    qwen = layout("qwen3-8b")
    assert qwen.bytes_per_block == 36 * 8 * 16 * 256 * 2  # layers x heads x block x (k+v) x bytes
    budget = 10 * 2**30
    assert qwen.blocks(budget) == budget // qwen.bytes_per_block
    assert qwen.tokens(budget) == qwen.blocks(budget) * 16
    assert qwen.tokens(qwen.bytes_per_block - 1) == 0


def test_tensor_parallel_divides_kv_heads_and_replicates_below_one() -> None:
    assert layout("qwen3-8b", tp=2).bytes_per_token == 72 * KIB
    assert layout("qwen2.5-7b", tp=8).heads_per_gpu == 1  # 4 KV heads over 8 ranks: replicated
    assert layout("qwen2.5-7b", tp=8).bytes_per_token == 14 * KIB


def test_mla_is_not_divided_by_tensor_parallel() -> None:
    assert layout("deepseek-v2-lite-chat", tp=4).bytes_per_token == layout("deepseek-v2-lite-chat").bytes_per_token


def test_fp8_kv_cache_halves_it() -> None:
    assert layout("qwen3-8b", dtype_bytes=kv_dtype_bytes("fp8", 2)).bytes_per_token == 72 * KIB


def test_packed_kv_formats_are_refused() -> None:
    with pytest.raises(UnsupportedModel, match="int8_per_token_head"):
        kv_dtype_bytes("int8_per_token_head", 2)


def test_full_length_sequences_that_fit() -> None:
    qwen = layout("qwen3-8b")
    one = qwen.bytes_for(1, 32768, 4096)
    assert one == 32768 * 144 * KIB  # 2048 blocks of 16 tokens
    assert qwen.sequences(3 * one, 32768, 4096) == 3
    assert qwen.sequences(3 * one - 1, 32768, 4096) == 2
    assert qwen.bytes_for_tokens(100_000) == -(-100_000 // 16) * qwen.bytes_per_block


def test_sliding_window_layers_hold_only_the_window() -> None:
    mistral = layout("mistral-7b-v0.1")
    assert len(mistral.groups) == 1 and mistral.groups[0].window == 4096
    # a 32k request holds cdiv(4095 + in-flight, 16) + 1 blocks, not 2048
    assert mistral.blocks_per_sequence(32768, 4096) == -(-(4095 + 4096) // 16) + 1
    assert layout("mistral-7b-v0.1", sliding_as_full=True).blocks_per_sequence(32768, 4096) == 2048


def test_hybrid_layers_form_equal_groups_as_vllm_does() -> None:
    gemma2 = {"model_type": "gemma2", "hidden_size": 3584, "num_hidden_layers": 42, "num_attention_heads": 16,
              "num_key_value_heads": 8, "head_dim": 256, "sliding_window": 4096}
    hybrid = kv_layout(model_facts(gemma2).attention, dtype_bytes=2, tensor_parallel=1, block_size=16)
    assert [(g.layers, g.window) for g in hybrid.groups] == [(21, 4096), (21, None)]
    page = 8 * 16 * 512 * 2
    assert hybrid.bytes_per_block == 21 * page  # one block holds a page of every layer in one group
    assert hybrid.blocks_per_sequence(8192, 4096) == 512 + (-(-(4095 + 4096) // 16) + 1)
    gemma3 = {"model_type": "gemma3_text", "hidden_size": 2560, "num_hidden_layers": 34, "num_attention_heads": 8,
              "num_key_value_heads": 4, "head_dim": 256, "sliding_window": 1024, "sliding_window_pattern": 6}
    groups = kv_layout(model_facts(gemma3).attention, dtype_bytes=2, tensor_parallel=1, block_size=16).groups
    # 29 sliding + 5 full layers: groups of 5, the last sliding group padded (vLLM pads, too)
    assert [(g.layers, g.window) for g in groups] == [(5, 1024)] * 6 + [(5, None)]


def test_encoder_only_model_has_only_the_null_block() -> None:
    bert = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2}
    none = kv_layout(model_facts(bert).attention, dtype_bytes=4, tensor_parallel=1, block_size=128)
    assert (none.has_cache, none.bytes_per_token, none.blocks(64 * 2**20), none.tokens(64 * 2**20)) == (False, 0, 1, 0)
