"""The published model files in tests/fixtures/models, and safetensors files written for tests."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures" / "models"
_DTYPE_BYTES = {"BF16": 2, "F16": 2, "F32": 4, "F8_E4M3": 1, "I32": 4, "U8": 1, "I64": 8}


def config(name: str) -> dict[str, Any]:
    return json.loads((FIXTURES / name / "config.json").read_text())


def write_safetensors(path: Path, tensors: dict[str, tuple[str, list[int]]]) -> int:
    """A header-only safetensors file: the header claims the byte ranges, no data follows (the
    planner reads headers only). Returns the bytes the header describes."""
    header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
    offset = 0
    for name, (dtype, shape) in tensors.items():
        count = 1
        for dim in shape:
            count *= dim
        size = count * _DTYPE_BYTES[dtype]
        if dtype == "I32" and name.endswith(("qweight", "qzeros")):
            size = count * 4  # already packed: the shape is the I32 array's
        header[name] = {"dtype": dtype, "shape": shape, "data_offsets": [offset, offset + size]}
        offset += size
    raw = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(raw)) + raw)
    return offset


def header_only_model(folder: Path, name: str, tensors: dict[str, tuple[str, list[int]]] | None = None) -> Path:
    """A model folder: the fixture's config.json, and a header-only model.safetensors holding the
    published parameter count (`hub-safetensors.json`) as one tensor per dtype, unless given."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "config.json").write_text((FIXTURES / name / "config.json").read_text())
    if tensors is None:
        counts = json.loads((FIXTURES / name / "hub-safetensors.json").read_text())["parameters"]
        tensors = {f"weights.{dtype.lower()}": (dtype, [count]) for dtype, count in counts.items()}
    write_safetensors(folder / "model.safetensors", tensors)
    return folder


def dense_parameters(cfg: dict[str, Any], *, qkv_bias: bool = False, qk_norm: bool = False) -> int:
    """Parameters of a Llama-family decoder from its config alone: embeddings (twice unless tied),
    q/k/v/o, the gated MLP, two norms per layer and the final norm."""
    hidden, inter, vocab = cfg["hidden_size"], cfg["intermediate_size"], cfg["vocab_size"]
    heads, kv = cfg["num_attention_heads"], cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    head_dim = cfg.get("head_dim") or hidden // heads
    q, k = heads * head_dim, kv * head_dim
    layer = hidden * q + 2 * hidden * k + q * hidden + 3 * hidden * inter + 2 * hidden
    if qkv_bias:
        layer += q + 2 * k
    if qk_norm:
        layer += 2 * head_dim
    embeddings = vocab * hidden * (1 if cfg.get("tie_word_embeddings") else 2)
    return embeddings + cfg["num_hidden_layers"] * layer + hidden
