"""`adapters.py`: an adapter folder read and checked as vLLM's worker does."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from vllm_gateway.simulator import write_adapter
from vllm_gateway.simulator.adapters import (
    AdapterInvalid,
    AdapterNotFound,
    read_adapter,
    resolve,
)


def test_a_written_adapter_reads_back_with_its_rank_and_base_model(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", rank=32, base_model="org/base")
    files = read_adapter(str(folder), max_lora_rank=64)
    assert (files.rank, files.base_model_name_or_path, files.path) == (32, "org/base", str(folder))
    config = json.loads((folder / "adapter_config.json").read_text())
    assert config["peft_type"] == "LORA" and config["r"] == 32


def test_the_largest_rank_counts_rank_pattern_included(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", rank=8, rank_pattern={"q_proj": 32})
    with pytest.raises(AdapterInvalid, match="LoRA rank 32 is greater than max_lora_rank 16."):
        read_adapter(str(folder), max_lora_rank=16)


def test_several_problems_are_reported_together_in_vllms_order(tmp_path: Path) -> None:
    folder = write_adapter(tmp_path / "a", rank=64, use_dora=True, bias="lora_only")
    with pytest.raises(AdapterInvalid) as caught:
        read_adapter(str(folder), max_lora_rank=16)
    assert str(caught.value) == ("vLLM does not yet support DoRA. LoRA rank 64 is greater than max_lora_rank 16. "
                                 "Adapter bias is not supported.")


@pytest.mark.parametrize("missing", ["nowhere", "empty"])
def test_no_config_means_no_adapter(tmp_path: Path, missing: str) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(AdapterNotFound):
        read_adapter(str(tmp_path / missing), max_lora_rank=16)


def test_paths_resolve_like_vllms_get_adapter_absolute_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    write_adapter(tmp_path / "here")
    assert resolve("here") == str(tmp_path / "here")
    assert resolve("org/hub-adapter") == "org/hub-adapter"  # would be a hub id; vLLM offline then finds nothing
    assert resolve("/abs/never") == "/abs/never"
    assert resolve("~/x") == os.path.expanduser("~/x")
    assert read_adapter("here", 16).rank == 8
