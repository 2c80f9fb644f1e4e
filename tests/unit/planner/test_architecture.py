"""What config.json says about the KV cache, by vLLM's rules; and what the planner refuses."""

from __future__ import annotations

import pytest

from tests.unit.planner.published import config
from vllm_gateway.planner.architecture import MissingField, UnsupportedModel, model_facts, text_config


def test_grouped_query_attention_counts_kv_heads_not_query_heads() -> None:
    attention = model_facts(config("qwen3-8b")).attention
    assert (attention.kind, attention.layers, attention.total_kv_heads, attention.head_size) == ("standard", 36, 8, 128)
    assert attention.sliding_layers == 0


def test_head_dim_from_hidden_over_heads_when_not_given() -> None:
    attention = model_facts(config("llama-3.1-8b")).attention
    assert (attention.total_kv_heads, attention.head_size) == (8, 4096 // 32)


def test_qwen2_sliding_window_is_off_when_use_sliding_window_is_false() -> None:
    facts = model_facts(config("qwen2.5-7b"))
    assert facts.attention.sliding_layers == 0 and facts.attention.total_kv_heads == 4


def test_mistral_slides_in_every_layer() -> None:
    attention = model_facts(config("mistral-7b-v0.1")).attention
    assert attention.windows == (4096,) * 32


def test_mla_stores_one_latent_per_token() -> None:
    attention = model_facts(config("deepseek-v2-lite-chat")).attention
    assert (attention.kind, attention.total_kv_heads, attention.head_size, attention.head_size_v) == ("mla", 1, 576, 0)


def test_gemma2_alternates_sliding_and_full_layers() -> None:
    cfg = {"model_type": "gemma2", "architectures": ["Gemma2ForCausalLM"], "hidden_size": 3584, "num_hidden_layers": 42,
           "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 256, "sliding_window": 4096}
    windows = model_facts(cfg).attention.windows
    assert windows[:4] == (4096, None, 4096, None) and windows.count(None) == 21


def test_layer_types_decide_per_layer() -> None:
    cfg = {"model_type": "gpt_oss", "hidden_size": 2880, "num_hidden_layers": 4, "num_attention_heads": 64,
           "num_key_value_heads": 8, "head_dim": 64, "sliding_window": 128,
           "layer_types": ["sliding_attention", "full_attention", "sliding_attention", "full_attention"]}
    assert model_facts(cfg).attention.windows == (128, None, 128, None)


def test_multimodal_configs_nest_the_language_model() -> None:
    cfg = {"architectures": ["Gemma3ForConditionalGeneration"], "model_type": "gemma3", "torch_dtype": "bfloat16",
           "text_config": {"model_type": "gemma3_text", "hidden_size": 2560, "num_hidden_layers": 6,
                           "num_attention_heads": 8, "num_key_value_heads": 4, "head_dim": 256,
                           "sliding_window": 1024, "sliding_window_pattern": 6},
           "vision_config": {"hidden_size": 1152, "num_hidden_layers": 27}}
    facts = model_facts(cfg)
    assert text_config(cfg) is cfg["text_config"]
    assert facts.model_type == "gemma3_text" and facts.dtype == "bfloat16"
    assert facts.attention.windows == (1024,) * 5 + (None,)


def test_encoder_only_models_keep_no_kv_cache() -> None:
    bert = {"architectures": ["BertModel"], "model_type": "bert", "hidden_size": 128, "num_hidden_layers": 2,
            "num_attention_heads": 2}
    facts = model_facts(bert)
    assert facts.attention.kind == "none" and facts.pooling


def test_embedding_architecture_is_pooling() -> None:
    assert model_facts(config("qwen3-embedding-0.6b")).pooling
    assert not model_facts(config("qwen3-8b")).pooling


@pytest.mark.parametrize(("cfg", "message"), [
    ({"model_type": "qwen3_next", "hidden_size": 2048, "num_hidden_layers": 48}, "Mamba/linear-attention"),
    ({"model_type": "jamba", "hidden_size": 4096, "num_hidden_layers": 32}, "Mamba/linear-attention"),
    ({"model_type": "deepseek_v32", "hidden_size": 7168, "num_hidden_layers": 61, "kv_lora_rank": 512},
     "indexer cache"),
    ({"model_type": "x", "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
      "layer_types": ["full_attention", "linear_attention"]}, "per-sequence state"),
])
def test_state_space_and_sparse_hybrids_are_refused_with_the_reason(cfg: dict, message: str) -> None:
    with pytest.raises(UnsupportedModel, match=message):
        model_facts(cfg)


def test_a_config_without_layers_names_the_field() -> None:
    with pytest.raises(MissingField, match="num_hidden_layers"):
        model_facts({"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32})


def test_quantisation_method_is_read() -> None:
    cfg = {**config("qwen3-8b"), "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    assert model_facts(cfg).quantization == "fp8"
