"""What a model's `config.json` says about its KV cache: layers, KV heads, head size, windows.

The rules follow vLLM (config/model.py `get_num_kv_heads`, transformers_utils/
model_arch_config_convertor.py `get_head_size`/`get_total_num_kv_heads`/`is_deepseek_mla`,
model_executor/layers/attention/attention.py `get_kv_cache_spec`). Models whose cache is not
"so many bytes per token" (Mamba and linear-attention hybrids, sparse-attention indexers) are
refused with the reason rather than planned wrongly.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

# config.json dtype names -> bytes per element (torch_dtype or, since transformers 4.56, dtype)
DTYPE_BYTES = {"float32": 4, "float": 4, "float16": 2, "half": 2, "bfloat16": 2, "float64": 8}
# vLLM's MLA model types (is_deepseek_mla), minus the ones with an extra sparse-attention cache
_MLA_TYPES = {"deepseek_v2", "deepseek_v3", "deepseek_mtp", "kimi_k2", "glm4_moe_lite", "longcat_flash",
              "pangu_ultra_moe", "axk1", "dots3_note"}
_SPARSE_MLA_TYPES = {"deepseek_v32", "deepseek_v4", "deepseek_v41", "glm_moe_dsa", "glm5_next", "kimi_linear"}
# Architectures vLLM runs with encoder-only (bidirectional) attention: no KV cache at all
# (bert.py, bert_with_rope.py, modernbert.py, roberta; attention.py returns no spec for them).
_ENCODER_ONLY_TYPES = {"bert", "roberta", "xlm-roberta", "modernbert", "nomic_bert", "new", "gte", "jina_bert"}
# Hybrid families whose non-attention layers keep a per-sequence state (Mamba, linear attention).
_STATE_SPACE_TYPES = {"mamba", "mamba2", "jamba", "zamba", "zamba2", "falcon_h1", "nemotron_h", "bamba",
                      "granitemoehybrid", "qwen3_next", "qwen3_5", "qwen3_5_moe", "lfm2", "minimax_text_01",
                      "minimax_m1", "plamo2", "phi4flash", "hunyuan_v1_hybrid", "kimi_linear", "olmo_hybrid"}
_TEXT_CONFIG_KEYS = ("text_config", "llm_config", "language_config")


class UnsupportedModel(ValueError):
    """The planner cannot size this model's KV cache; the message says why and what to do."""


class MissingField(ValueError):
    """config.json lacks a field the planner needs; the message names it."""


@dataclass(frozen=True)
class Attention:
    """The KV-cache-relevant shape of the model's attention layers."""

    kind: Literal["standard", "mla", "none"]
    windows: tuple[int | None, ...]  # one per attention layer: None = full attention, n = sliding window of n
    total_kv_heads: int  # before tensor parallelism (1 for MLA: one latent per token)
    head_size: int  # K part (MLA: kv_lora_rank + qk_rope_head_dim)
    head_size_v: int  # V part (MLA: 0, the latent is shared)
    note: str = ""

    @property
    def layers(self) -> int:
        return len(self.windows)

    @property
    def sliding_layers(self) -> int:
        return sum(1 for w in self.windows if w is not None)


@dataclass(frozen=True)
class ModelFacts:
    model_type: str
    architectures: tuple[str, ...]
    dtype: str | None  # the checkpoint's declared dtype (torch_dtype / dtype), None when absent
    hidden_size: int
    intermediate_size: int
    vocab_size: int
    max_position_embeddings: int | None
    tie_word_embeddings: bool
    quantization: str | None  # quantization_config.quant_method, e.g. "fp8", "awq", "gptq"
    attention: Attention
    pooling: bool  # an embedding/classification architecture (`*Model`, `*ForSequenceClassification`...)


def text_config(config: dict[str, Any]) -> dict[str, Any]:
    """The language model's part of a multimodal config (Gemma 3, Llava, InternVL...), else the whole."""
    for key in _TEXT_CONFIG_KEYS:
        nested = config.get(key)
        if isinstance(nested, dict) and ("num_hidden_layers" in nested or "hidden_size" in nested):
            return nested
    return config


def model_facts(config: dict[str, Any]) -> ModelFacts:
    text = text_config(config)
    model_type = str(text.get("model_type") or config.get("model_type") or "")
    architectures = tuple(str(a) for a in config.get("architectures") or text.get("architectures") or ())
    hidden = _int(text, "hidden_size", "n_embd", "d_model")
    quant = config.get("quantization_config") or text.get("quantization_config") or {}
    tie = config.get("tie_word_embeddings", text.get("tie_word_embeddings"))
    return ModelFacts(
        model_type=model_type,
        architectures=architectures,
        dtype=_declared_dtype(config, text),
        hidden_size=hidden,
        intermediate_size=_optional_int(text, "intermediate_size", "ffn_dim", "n_inner") or 4 * hidden,
        vocab_size=_optional_int(text, "vocab_size") or _optional_int(config, "vocab_size") or 0,
        max_position_embeddings=_optional_int(text, "max_position_embeddings", "n_positions", "max_seq_len"),
        tie_word_embeddings=bool(tie) if tie is not None else False,
        quantization=str(quant.get("quant_method")) if isinstance(quant, dict) and quant.get("quant_method") else None,
        attention=_attention(config, text, model_type),
        pooling=_is_pooling(architectures),
    )


def _attention(config: dict[str, Any], text: dict[str, Any], model_type: str) -> Attention:
    if model_type in _STATE_SPACE_TYPES or any(k in text for k in ("layers_block_type", "attn_type_list",
                                                                    "hybrid_override_pattern")):
        raise UnsupportedModel(
            f"model type {model_type!r} mixes attention with Mamba/linear-attention layers, whose state is "
            f"per sequence, not per token; the planner does not size it: give gpu_memory_utilization as a fraction")
    if model_type in _SPARSE_MLA_TYPES:
        raise UnsupportedModel(
            f"model type {model_type!r} uses sparse MLA with an indexer cache of its own; the planner does not "
            f"size it: give gpu_memory_utilization as a fraction")
    layers = _int(text, "num_hidden_layers", "n_layer", "num_layers")
    if model_type in _ENCODER_ONLY_TYPES or text.get("is_causal") is False:
        return Attention("none", (None,) * layers, 0, 0, 0,
                         note="encoder-only attention: vLLM keeps no KV cache (num_gpu_blocks 1, the null block)")
    if model_type in _MLA_TYPES and text.get("kv_lora_rank") is not None:
        rope = _int(text, "qk_rope_head_dim")
        return Attention("mla", (None,) * layers, 1, _int(text, "kv_lora_rank") + rope, 0,
                         note="MLA: one latent of kv_lora_rank + qk_rope_head_dim per token and layer, on every GPU")
    heads = _int(text, "num_attention_heads", "n_head", "num_heads")
    kv_heads = _optional_int(text, "n_head_kv", "num_kv_heads", "num_key_value_heads", "multi_query_group_num",
                             "num_attention_groups") or heads
    head_dim = _optional_int(text, "head_dim") or _optional_int(text, "hidden_size_per_head")
    if not head_dim:
        head_dim = _int(text, "hidden_size") // heads
    return Attention("standard", _windows(text, model_type, layers), kv_heads, head_dim, head_dim)


def _windows(text: dict[str, Any], model_type: str, layers: int) -> tuple[int | None, ...]:
    """Per layer: the sliding window, or None for full attention."""
    window = _optional_int(text, "sliding_window")
    layer_types = text.get("layer_types")
    if isinstance(layer_types, list) and layer_types:
        if len(layer_types) != layers:
            raise MissingField(f"config.json: layer_types has {len(layer_types)} entries for {layers} layers")
        out: list[int | None] = []
        for kind in layer_types:
            if kind == "full_attention":
                out.append(None)
            elif kind in ("sliding_attention", "sliding_window_attention"):
                if not window:
                    raise MissingField("config.json: sliding_attention layers but no sliding_window")
                out.append(window)
            else:
                raise UnsupportedModel(
                    f"layer type {kind!r} keeps a per-sequence state, not a per-token cache; the planner does not "
                    f"size it: give gpu_memory_utilization as a fraction")
        return tuple(out)
    if not window or text.get("use_sliding_window") is False:
        return (None,) * layers
    if model_type == "gemma2":  # even layers slide (transformers' Gemma2DecoderLayer)
        return tuple(window if i % 2 == 0 else None for i in range(layers))
    pattern = _optional_int(text, "sliding_window_pattern")
    if pattern:  # Gemma 3 before layer_types: every pattern-th layer is global
        return tuple(None if (i + 1) % pattern == 0 else window for i in range(layers))
    return (window,) * layers  # Mistral-style: every layer slides


def _declared_dtype(config: dict[str, Any], text: dict[str, Any]) -> str | None:
    for source in (config, text):
        for key in ("dtype", "torch_dtype"):
            value = source.get(key)
            if isinstance(value, str) and value:
                return value.removeprefix("torch.")
    return None


def _is_pooling(architectures: tuple[str, ...]) -> bool:
    """vLLM's `--runner auto` picks pooling for these suffixes (config/model.py _SUFFIX_TO_DEFAULTS)."""
    suffixes = ("Model", "ForSequenceClassification", "ForTokenClassification", "EmbeddingModel", "RewardModel",
                "ForRewardModeling")
    return bool(architectures) and all(a.endswith(suffixes) and not a.endswith("ForCausalLM") for a in architectures)


def _optional_int(source: dict[str, Any], *keys: str) -> int | None:
    for key in keys:
        value = source.get(key)
        if isinstance(value, bool):
            continue
        if isinstance(value, int) and value > 0:
            return value
    return None


def _int(source: dict[str, Any], *keys: str) -> int:
    value = _optional_int(source, *keys)
    if value is None:
        raise MissingField(f"config.json has no {keys[0]}" + (f" (nor {', '.join(keys[1:])})" if keys[1:] else ""))
    return value
