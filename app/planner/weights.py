"""Parameter bytes, exactly, from safetensors headers; and what vLLM will hold of them on a GPU.

A safetensors file starts with an 8-byte little-endian length and a JSON header naming every
tensor's dtype, shape and byte range: reading it costs a few kilobytes, never the weights. The
byte ranges make quantised checkpoints right without knowing the format (FP8 is one byte per
value, AWQ packs eight int4 values into one I32, their scales are whatever the header says).
"""

from __future__ import annotations

import json
import math
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .architecture import DTYPE_BYTES, ModelFacts

_FLOATS = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2}
_LONGEST_HEADER = 100 * 2**20  # the format's own limit


class BadWeights(ValueError):
    """A safetensors file or index that cannot be read; the message names the file."""


@dataclass(frozen=True)
class Tensor:
    name: str
    dtype: str  # safetensors' names: BF16, F32, F8_E4M3, I32, U8...
    nbytes: int
    numel: int


@dataclass(frozen=True)
class StoredWeights:
    """What the checkpoint holds: every tensor when the headers were read, else an index's total."""

    total_bytes: int
    names: frozenset[str]
    source: str  # e.g. "safetensors headers (5 files)", "model.safetensors.index.json total_size"
    tensors: tuple[Tensor, ...] | None = None


@dataclass(frozen=True)
class LoadedWeights:
    """The weights as vLLM holds them: the whole model, and one GPU's part under tensor parallelism."""

    total_bytes: int
    per_gpu_bytes: int
    exact: bool
    note: str


def read_header(path: Path) -> dict[str, Any]:
    """The JSON header of one safetensors file (a few KiB read, whatever the file's size)."""
    try:
        with open(path, "rb") as file:
            prefix = file.read(8)
            if len(prefix) != 8:
                raise BadWeights(f"{path}: too short to be a safetensors file")
            (length,) = struct.unpack("<Q", prefix)
            if length > _LONGEST_HEADER:
                raise BadWeights(f"{path}: header length {length} is not a safetensors header")
            raw = file.read(length)
    except OSError as exc:
        raise BadWeights(f"{path}: cannot read ({exc.strerror})") from None
    try:
        header = json.loads(raw)
    except ValueError:
        raise BadWeights(f"{path}: the header is not JSON; not a safetensors file") from None
    if not isinstance(header, dict):
        raise BadWeights(f"{path}: the header is not a JSON object")
    return header


def tensors_of(header: dict[str, Any], where: str) -> list[Tensor]:
    out = []
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        try:
            start, end = entry["data_offsets"]
            out.append(Tensor(name, str(entry["dtype"]), int(end) - int(start), math.prod(entry["shape"])))
        except (KeyError, TypeError, ValueError):
            raise BadWeights(f"{where}: tensor {name!r} has no dtype, shape and data_offsets") from None
    return out


def from_tensors(tensors: list[Tensor], source: str) -> StoredWeights:
    return StoredWeights(sum(t.nbytes for t in tensors), frozenset(t.name for t in tensors), source, tuple(tensors))


def read_files(paths: list[Path]) -> StoredWeights:
    tensors: list[Tensor] = []
    for path in paths:
        tensors.extend(tensors_of(read_header(path), str(path)))
    return from_tensors(tensors, f"safetensors headers ({len(paths)} file{'s' if len(paths) != 1 else ''})")


def from_index(index: dict[str, Any], where: str) -> StoredWeights:
    """An index's `metadata.total_size` (the sum of its tensors' bytes, as published) and tensor names."""
    try:
        total = int(index["metadata"]["total_size"])
    except (KeyError, TypeError, ValueError):
        raise BadWeights(f"{where}: no metadata.total_size") from None
    names = index.get("weight_map") or {}
    return StoredWeights(total, frozenset(names), f"{Path(where).name} total_size")


def loaded(stored: StoredWeights, facts: ModelFacts, dtype_bytes: int, tensor_parallel: int) -> LoadedWeights:
    """What vLLM loads: a tied `lm_head` is not loaded twice, unquantised floats take the serving
    dtype (a float32 checkpoint runs as bfloat16 by default), quantised tensors stay as stored."""
    notes = []
    exact = True
    total = stored.total_bytes
    tied = facts.tie_word_embeddings and "lm_head.weight" in stored.names
    if stored.tensors is not None:
        total = 0
        for tensor in stored.tensors:
            if tied and tensor.name == "lm_head.weight":
                continue
            if facts.quantization is None and tensor.dtype in _FLOATS:
                total += tensor.numel * dtype_bytes
            else:
                total += tensor.nbytes
    else:
        stored_bytes = DTYPE_BYTES.get(facts.dtype or "", dtype_bytes)
        if tied:  # the index lists the duplicate; its size follows from the config
            total -= facts.vocab_size * facts.hidden_size * stored_bytes
            notes.append("tied lm_head.weight not counted")
        if facts.quantization is None and stored_bytes != dtype_bytes:
            total = total * dtype_bytes // stored_bytes
            exact = False
            notes.append(f"scaled from {facts.dtype} to the serving dtype")
    if tied and stored.tensors is not None:
        notes.append("tied lm_head.weight not counted")
    per_gpu = total if tensor_parallel == 1 else cdiv(total, tensor_parallel)
    if tensor_parallel > 1:
        exact = False
        notes.append(f"split evenly over {tensor_parallel} GPUs")
    return LoadedWeights(total, per_gpu, exact, "; ".join(notes))


def cdiv(a: int, b: int) -> int:
    return -(a // -b)
