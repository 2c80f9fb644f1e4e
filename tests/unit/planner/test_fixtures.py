"""The published figures in tests/fixtures/models agree with their own configs (no typo either side)."""

from __future__ import annotations

import json

import pytest

from tests.unit.planner.published import FIXTURES, config, dense_parameters


@pytest.mark.parametrize(("name", "qkv_bias", "qk_norm"), [
    ("qwen3-8b", False, True),
    ("llama-3.1-8b", False, False),
    ("qwen2.5-7b", True, False),
    ("mistral-7b-v0.1", False, False),
])
def test_index_total_size_is_the_bf16_bytes_of_the_configs_parameters(name: str, qkv_bias: bool,
                                                                       qk_norm: bool) -> None:
    index = json.loads((FIXTURES / name / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 2 * dense_parameters(config(name), qkv_bias=qkv_bias, qk_norm=qk_norm)


def test_the_embedding_models_hub_count_is_its_configs_parameters() -> None:
    counts = json.loads((FIXTURES / "qwen3-embedding-0.6b" / "hub-safetensors.json").read_text())
    assert counts["parameters"]["BF16"] == dense_parameters(config("qwen3-embedding-0.6b"), qk_norm=True)
