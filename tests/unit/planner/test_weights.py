"""Parameter bytes from safetensors headers, and what vLLM loads of them."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from tests.unit.planner.published import FIXTURES, config, write_safetensors
from vllm_gateway.planner.architecture import model_facts
from vllm_gateway.planner.weights import BadWeights, from_index, loaded, read_files, read_header


def test_header_bytes_are_summed_over_every_shard(tmp_path: Path) -> None:
    a = write_safetensors(tmp_path / "model-00001-of-00002.safetensors",
                          {"model.embed_tokens.weight": ("BF16", [1000, 64]), "model.norm.weight": ("BF16", [64])})
    b = write_safetensors(tmp_path / "model-00002-of-00002.safetensors", {"lm_head.weight": ("BF16", [1000, 64])})
    stored = read_files(sorted(tmp_path.glob("*.safetensors")))
    assert stored.total_bytes == a + b == (2 * 64000 + 64) * 2
    assert stored.source == "safetensors headers (2 files)"
    assert "lm_head.weight" in stored.names


def test_only_the_header_is_read(tmp_path: Path) -> None:
    """A shard is read for its header; the byte ranges it claims are never touched."""
    write_safetensors(tmp_path / "big.safetensors", {"w": ("BF16", [50_000, 50_000])})  # claims 5 GB
    assert (tmp_path / "big.safetensors").stat().st_size < 1000
    assert read_files([tmp_path / "big.safetensors"]).total_bytes == 5 * 10**9


def test_fp8_checkpoint_counts_one_byte_per_weight_and_keeps_its_scales(tmp_path: Path) -> None:
    cfg = {**config("qwen3-8b"), "quantization_config": {"quant_method": "fp8", "weight_block_size": [128, 128]}}
    write_safetensors(tmp_path / "model.safetensors", {
        "model.layers.0.mlp.down_proj.weight": ("F8_E4M3", [4096, 12288]),
        "model.layers.0.mlp.down_proj.weight_scale_inv": ("F32", [32, 96]),
        "model.layers.0.input_layernorm.weight": ("BF16", [4096]),
    })
    stored = read_files([tmp_path / "model.safetensors"])
    weights = loaded(stored, model_facts(cfg), dtype_bytes=2, tensor_parallel=1)
    assert weights.total_bytes == 4096 * 12288 + 32 * 96 * 4 + 4096 * 2  # F32 scales are not cast
    assert weights.exact


def test_awq_packs_eight_int4_values_per_i32(tmp_path: Path) -> None:
    cfg = {**config("qwen2.5-7b"), "quantization_config": {"quant_method": "awq", "bits": 4, "group_size": 128}}
    # AWQ GEMM: qweight [in, out/8] I32, qzeros [in/128, out/8] I32, scales [in/128, out] F16
    write_safetensors(tmp_path / "model.safetensors", {
        "model.layers.0.mlp.up_proj.qweight": ("I32", [3584, 18944 // 8]),
        "model.layers.0.mlp.up_proj.qzeros": ("I32", [3584 // 128, 18944 // 8]),
        "model.layers.0.mlp.up_proj.scales": ("F16", [3584 // 128, 18944]),
    })
    weights = loaded(read_files([tmp_path / "model.safetensors"]), model_facts(cfg), dtype_bytes=2, tensor_parallel=1)
    assert weights.total_bytes == 3584 * 18944 // 2 + 28 * 18944 // 2 + 28 * 18944 * 2  # half a byte per weight


def test_a_float32_checkpoint_runs_in_the_serving_dtype(tmp_path: Path) -> None:
    cfg = {**config("qwen3-0.6b"), "torch_dtype": "float32"}
    write_safetensors(tmp_path / "model.safetensors", {"w": ("F32", [1000, 100])})
    stored = read_files([tmp_path / "model.safetensors"])
    assert loaded(stored, model_facts(cfg), dtype_bytes=2, tensor_parallel=1).total_bytes == 200_000
    assert loaded(stored, model_facts(cfg), dtype_bytes=4, tensor_parallel=1).total_bytes == 400_000


def test_a_tied_lm_head_is_not_loaded_twice(tmp_path: Path) -> None:
    write_safetensors(tmp_path / "model.safetensors", {"model.embed_tokens.weight": ("BF16", [151936, 1024]),
                                                       "lm_head.weight": ("BF16", [151936, 1024])})
    weights = loaded(read_files([tmp_path / "model.safetensors"]), model_facts(config("qwen3-0.6b")), 2, 1)
    assert weights.total_bytes == 151936 * 1024 * 2
    assert "tied lm_head.weight not counted" in weights.note


def test_published_index_totals() -> None:
    for name, total in (("qwen3-8b", 16381470720), ("llama-3.1-8b", 16060522496), ("qwen2.5-7b", 15231233024)):
        path = FIXTURES / name / "model.safetensors.index.json"
        stored = from_index(json.loads(path.read_text()), str(path))
        weights = loaded(stored, model_facts(config(name)), dtype_bytes=2, tensor_parallel=1)
        assert (weights.total_bytes, weights.exact) == (total, True)
        assert stored.source == "model.safetensors.index.json total_size"


def test_tensor_parallel_splits_the_weights_and_says_it_is_an_estimate() -> None:
    path = FIXTURES / "qwen3-8b" / "model.safetensors.index.json"
    weights = loaded(from_index(json.loads(path.read_text()), str(path)), model_facts(config("qwen3-8b")), 2, 2)
    assert weights.per_gpu_bytes == 16381470720 // 2 and not weights.exact


@pytest.mark.parametrize(("content", "message"), [
    (b"\x01\x00", "too short"),
    (struct.pack("<Q", 2**40) + b"{}", "not a safetensors header"),
    (struct.pack("<Q", 5) + b"nope!", "not JSON"),
    (struct.pack("<Q", 2) + b"[]", "not a JSON object"),
])
def test_files_that_are_not_safetensors_name_the_file(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.safetensors"
    path.write_bytes(content)
    with pytest.raises(BadWeights, match=message):
        read_header(path)


def test_a_tensor_without_offsets_is_named(tmp_path: Path) -> None:
    raw = json.dumps({"w": {"dtype": "BF16", "shape": [2]}}).encode()
    (tmp_path / "m.safetensors").write_bytes(struct.pack("<Q", len(raw)) + raw)
    with pytest.raises(BadWeights, match="tensor 'w'"):
        read_files([tmp_path / "m.safetensors"])
