"""Finding a model's files: a folder, the Hugging Face cache (offline), never the hub unless allowed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.unit.planner.published import FIXTURES, write_safetensors
from vllm_gateway.planner.model_files import ModelUnavailable, hub_cache_dir, offline, read_model_files


def hf_cache(root: Path, repo: str, files: dict[str, Path], revision: str = "0123456789abcdef") -> Path:
    """The hub cache layout: models--org--name/{refs/main, snapshots/<rev>/<file> -> blobs/<hash>}."""
    folder = root / f"models--{repo.replace('/', '--')}"
    (folder / "refs").mkdir(parents=True)
    (folder / "refs" / "main").write_text(revision)
    snapshot = folder / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (folder / "blobs").mkdir()
    for index, (name, source) in enumerate(files.items()):
        blob = folder / "blobs" / f"blob{index}"
        shutil.copy(source, blob)
        (snapshot / name).symlink_to(blob)
    return snapshot


def test_a_local_folder_with_every_shard_reads_the_headers(tmp_path: Path) -> None:
    (tmp_path / "config.json").write_text((FIXTURES / "qwen3-8b" / "config.json").read_text())
    size = write_safetensors(tmp_path / "model-00001-of-00001.safetensors", {"w": ("BF16", [10, 10])})
    (tmp_path / "model.safetensors.index.json").write_text(json.dumps(
        {"metadata": {"total_size": 1}, "weight_map": {"w": "model-00001-of-00001.safetensors"}}))
    files = read_model_files(str(tmp_path), env={})
    assert files.weights is not None and files.weights.total_bytes == size == 200  # headers win over total_size
    assert files.config["model_type"] == "qwen3"


def test_a_folder_without_the_shards_uses_the_index_total() -> None:
    files = read_model_files(str(FIXTURES / "qwen3-8b"), env={})
    assert files.weights is not None and files.weights.total_bytes == 16381470720


def test_a_folder_without_safetensors_has_unknown_weights() -> None:
    files = read_model_files(str(FIXTURES / "deepseek-v2-lite-chat"), env={})
    assert files.weights is None


def test_hub_names_are_found_in_the_cache_offline(tmp_path: Path) -> None:
    weights = tmp_path / "w.safetensors"
    write_safetensors(weights, {"model.embed_tokens.weight": ("BF16", [151669, 1024])})
    hf_cache(tmp_path / "hub", "Qwen/Qwen3-Embedding-0.6B",
             {"config.json": FIXTURES / "qwen3-embedding-0.6b" / "config.json", "model.safetensors": weights})
    files = read_model_files("Qwen/Qwen3-Embedding-0.6B", env={"HF_HUB_CACHE": str(tmp_path / "hub"),
                                                                "HF_HUB_OFFLINE": "1"})
    assert files.weights is not None and files.weights.total_bytes == 151669 * 1024 * 2
    assert files.location.startswith("Hugging Face cache")


def test_hf_home_is_honoured_as_vllm_does(tmp_path: Path) -> None:
    hf_cache(tmp_path / "home" / "hub", "Qwen/Qwen3-8B",
             {"config.json": FIXTURES / "qwen3-8b" / "config.json",
              "model.safetensors.index.json": FIXTURES / "qwen3-8b" / "model.safetensors.index.json"})
    files = read_model_files("Qwen/Qwen3-8B", env={"HF_HOME": str(tmp_path / "home")})
    assert files.weights is not None and files.weights.source == "model.safetensors.index.json total_size"


def test_a_name_not_downloaded_offline_is_unavailable_with_the_place_looked(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match=r"not in the Hugging Face cache at .*hub; offline"):
        read_model_files("Qwen/Qwen3Guard-Gen-8B", env={"HF_HUB_CACHE": str(tmp_path / "hub"), "HF_HUB_OFFLINE": "1"},
                         allow_network=True)


def test_the_hub_is_not_asked_unless_allowed(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="the hub was not asked"):
        read_model_files("Qwen/Qwen3Guard-Gen-8B", env={"HF_HUB_CACHE": str(tmp_path)})


def test_a_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no such folder"):
        read_model_files(str(tmp_path / "nope"), env={})


def test_a_folder_without_config_is_named(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailable, match="no config.json"):
        read_model_files(str(tmp_path), env={})


def test_cache_location_rules() -> None:
    assert hub_cache_dir({"HF_HUB_CACHE": "/a"}) == Path("/a")
    assert hub_cache_dir({"HF_HOME": "/b"}) == Path("/b/hub")
    assert hub_cache_dir({"XDG_CACHE_HOME": "/c"}) == Path("/c/huggingface/hub")
    assert offline({"HF_HUB_OFFLINE": "1"}) and offline({"TRANSFORMERS_OFFLINE": "true"}) and not offline({})
