"""Find a model's `config.json` and safetensors headers: a folder, the Hugging Face cache, or the hub.

In that order. The cache is read offline with `huggingface_hub` (the layout vLLM itself uses,
under HF_HUB_CACHE, else HF_HOME/hub, else ~/.cache/huggingface/hub; the backend's `launch.env`
counts, since that is the environment vLLM will see). The hub is asked only when the caller
allows it and neither HF_HUB_OFFLINE nor TRANSFORMERS_OFFLINE is set, and only for
`config.json` and the safetensors headers (HTTP range requests), never for weights.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .weights import BadWeights, StoredWeights, Tensor, from_index, from_tensors, read_files

INDEX = "model.safetensors.index.json"
_TRUE = ("1", "true", "yes", "on")


class ModelUnavailable(Exception):
    """The model's files cannot be read here (yet); the message says why and what would help."""


@dataclass(frozen=True)
class ModelFiles:
    config: dict[str, Any]
    weights: StoredWeights | None  # None: no safetensors found (e.g. only .bin or .gguf)
    location: str


def hub_cache_dir(env: Mapping[str, str]) -> Path:
    if env.get("HF_HUB_CACHE"):
        return Path(env["HF_HUB_CACHE"]).expanduser()
    if env.get("HF_HOME"):
        return Path(env["HF_HOME"]).expanduser() / "hub"
    base = Path(env["XDG_CACHE_HOME"]).expanduser() if env.get("XDG_CACHE_HOME") else Path.home() / ".cache"
    return base / "huggingface" / "hub"


def offline(env: Mapping[str, str]) -> bool:
    return any(env.get(name, "").strip().lower() in _TRUE for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def read_model_files(model: str, *, env: Mapping[str, str] | None = None, revision: str | None = None,
                     allow_network: bool = False) -> ModelFiles:
    env = os.environ if env is None else env
    path = Path(model).expanduser()
    if path.is_dir():
        return read_folder(path)
    if model.startswith(("/", ".", "~")) or model.count("/") > 1:
        raise ModelUnavailable(f"{model}: no such folder")
    cache = hub_cache_dir(env)
    snapshot = _cached_snapshot(model, cache, revision)
    if snapshot is not None:
        return read_folder(snapshot, location=f"Hugging Face cache {snapshot}")
    if not allow_network or offline(env):
        why = "offline (HF_HUB_OFFLINE)" if offline(env) else "the hub was not asked"
        raise ModelUnavailable(f"{model}: not a local folder and not in the Hugging Face cache at {cache}; {why}")
    return _from_hub(model, cache, revision)


def read_folder(folder: Path, location: str | None = None) -> ModelFiles:
    config_path = folder / "config.json"
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelUnavailable(f"{folder}: no config.json") from None
    except (OSError, ValueError) as exc:
        raise ModelUnavailable(f"{config_path}: cannot be read as JSON ({exc})") from None
    if not isinstance(config, dict):
        raise ModelUnavailable(f"{config_path}: not a JSON object")
    try:
        weights = _folder_weights(folder)
    except BadWeights as exc:
        raise ModelUnavailable(str(exc)) from None
    return ModelFiles(config, weights, location or str(folder))


def _folder_weights(folder: Path) -> StoredWeights | None:
    """Every shard's header when all shards are here, else the index's published total."""
    index_path = folder / INDEX
    if index_path.is_file():
        try:
            index = json.loads(index_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise BadWeights(f"{index_path}: cannot be read as JSON ({exc})") from None
        shards = sorted(set((index.get("weight_map") or {}).values()))
        files = [folder / name for name in shards]
        if shards and all(f.is_file() for f in files):  # is_file follows the cache's symlinks to blobs
            return read_files(files)
        return from_index(index, str(index_path))
    files = sorted(p for p in folder.glob("*.safetensors") if p.is_file())
    return read_files(files) if files else None


def _cached_snapshot(repo_id: str, cache: Path, revision: str | None) -> Path | None:
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:  # pragma: no cover - a declared dependency
        return None
    try:
        found = try_to_load_from_cache(repo_id, "config.json", cache_dir=cache, revision=revision)
    except ValueError:  # not a valid repo id
        return None
    return Path(found).parent if isinstance(found, str) else None


def _from_hub(repo_id: str, cache: Path, revision: str | None) -> ModelFiles:
    """The safetensors headers first (one quick request, no retries: an offline machine fails at
    once), then config.json, saved into the cache as vLLM would."""
    from huggingface_hub import get_safetensors_metadata, hf_hub_download
    from huggingface_hub.errors import HTTPError, NotASafetensorsRepoError

    weights: StoredWeights | None
    try:
        meta = get_safetensors_metadata(repo_id, revision=revision, timeout=5)
    except NotASafetensorsRepoError:
        weights = None
    except (HTTPError, OSError, ValueError) as exc:
        raise ModelUnavailable(f"{repo_id}: not in the Hugging Face cache and the hub did not answer "
                               f"({_first_line(exc)})") from None
    else:
        tensors = [Tensor(name, info.dtype, info.data_offsets[1] - info.data_offsets[0], info.parameter_count)
                   for file in meta.files_metadata.values() for name, info in file.tensors.items()]
        count = len(meta.files_metadata)
        weights = from_tensors(tensors, f"hub safetensors headers ({count} file{'s' if count != 1 else ''})")
    try:
        config_path = hf_hub_download(repo_id, "config.json", revision=revision, cache_dir=cache, etag_timeout=5)
        config = json.loads(Path(config_path).read_text(encoding="utf-8"))
    except (HTTPError, OSError, ValueError) as exc:
        raise ModelUnavailable(f"{repo_id}: config.json could not be fetched from the hub ({_first_line(exc)})") from None
    return ModelFiles(config, weights, f"hub {repo_id}")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__
