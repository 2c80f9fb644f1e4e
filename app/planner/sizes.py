"""Byte sizes as people write them, and as vLLM's own flags read them.

Two grammars, on purpose:
- `parse_size` is the gateway's (`--gpu-memory`, `gpu.memory`): `48GB` is decimal (48 x 10^9, how
  GPUs are sold), `48GiB` binary (48 x 2^30), and a bare letter follows vLLM's convention:
  `45.5G` is binary (GiB, as `nvidia-smi`'s MiB), `45.5g` decimal. Decimals are allowed anywhere.
- `vllm_int` is exactly vLLM's `human_readable_int` (utils/argparse_utils.py), used to read flags
  such as `--kv-cache-memory-bytes 64M` the way vLLM will: `K/M/G/T` binary, `k/m/g/t`
  decimal, and no decimals with a binary suffix.
"""

from __future__ import annotations

import re

KIB, MIB, GIB, TIB = 2**10, 2**20, 2**30, 2**40
_DECIMAL = {"k": 10**3, "m": 10**6, "g": 10**9, "t": 10**12}
_BINARY = {"k": KIB, "m": MIB, "g": GIB, "t": TIB}
_SIZE = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([A-Za-z]*)\s*")
_VLLM = re.compile(r"(\d+(?:\.\d+)?)([kKmMgGtT])")

SIZE_HELP = "a size such as 48GB (decimal), 45GiB (binary), 45.5G (binary, as vLLM's 8G) or a number of bytes"


def parse_size(value: str | int) -> int:
    """Bytes from `48GB`, `45GiB`, `45.5G`, `48000000000` or an int; ValueError says what is accepted."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not {SIZE_HELP}")  # a ValueError, not TypeError: pydantic reports it with the key
    if isinstance(value, int):
        if value <= 0:
            raise ValueError(f"{value} is not a positive number of bytes")
        return value
    match = _SIZE.fullmatch(str(value))
    if not match:
        raise ValueError(f"{value!r} is not {SIZE_HELP}")
    number, unit = float(match.group(1)), match.group(2)
    factor = _unit_factor(unit)
    if factor is None:
        raise ValueError(f"{value!r}: unknown unit {unit!r}; use B, KB/MB/GB/TB (decimal), KiB/MiB/GiB/TiB or K/M/G/T (binary)")
    size = int(number * factor)
    if size <= 0:
        raise ValueError(f"{value!r} is not a positive size")
    return size


def _unit_factor(unit: str) -> int | None:
    if unit in ("", "B", "b"):
        return 1
    if len(unit) == 1:  # vLLM's convention: upper case binary, lower case decimal
        letter = unit.lower()
        if letter not in _BINARY:
            return None
        return _BINARY[letter] if unit.isupper() else _DECIMAL[letter]
    lower = unit.lower()
    if len(lower) == 3 and lower.endswith("ib") and lower[0] in _BINARY:
        return _BINARY[lower[0]]
    if len(lower) == 2 and lower.endswith("b") and lower[0] in _DECIMAL:
        return _DECIMAL[lower[0]]
    return None


def vllm_int(value: str) -> int:
    """What vLLM's argument parser makes of a human-readable integer flag (e.g. `64M` = 64 MiB)."""
    text = value.strip()
    match = _VLLM.fullmatch(text)
    if match:
        number, suffix = match.groups()
        if suffix.islower():
            return int(float(number) * _DECIMAL[suffix])
        if "." in number:
            raise ValueError(f"{value!r}: vLLM allows no decimals with the binary suffix {suffix}; "
                             f"did you mean {number}{suffix.lower()}?")
        return int(number) * _BINARY[suffix.lower()]
    return int(text)


def gib(size: float) -> str:
    """`15.26 GiB`: the unit vLLM's own log lines use."""
    return f"{size / GIB:.2f} GiB"
