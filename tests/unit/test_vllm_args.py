"""The memory-relevant vLLM flags in `launch.args`, read as vLLM's argparse reads them."""

from __future__ import annotations

import pytest

from vllm_gateway.vllm_args import BadLaunchArgs, read_flags


def test_defaults_without_flags() -> None:
    flags = read_flags(["--enable-prefix-caching", "--max-num-seqs", "64"])
    assert (flags.dtype, flags.kv_cache_dtype, flags.tensor_parallel_size, flags.block_size) == ("auto", "auto", 1, None)
    assert flags.max_num_seqs == 64


def test_both_spellings_aliases_and_the_last_occurrence_wins() -> None:
    flags = read_flags(["-tp", "2", "--tensor-parallel-size=4", "--kv-cache-dtype", "fp8", "--block-size=32",
                        "--kv-cache-memory-bytes", "64M", "--dtype=float32", "--max-model-len", "32k"])
    assert flags.tensor_parallel_size == 4
    assert flags.kv_cache_dtype == "fp8"
    assert flags.block_size == 32
    assert flags.kv_cache_memory_bytes == 64 * 2**20
    assert flags.dtype == "float32"
    assert flags.max_model_len == 32000


def test_switches_and_their_no_forms() -> None:
    assert read_flags(["--enforce-eager"]).enforce_eager
    assert not read_flags(["--enforce-eager", "--no-enforce-eager"]).enforce_eager
    assert read_flags(["--disable-sliding-window"]).disable_sliding_window


def test_max_model_len_auto() -> None:
    flags = read_flags(["--max-model-len", "auto"])
    assert flags.max_model_len is None and flags.max_model_len_auto


def test_the_abbreviation_vllm_itself_suggests() -> None:
    assert read_flags(["--kv-cache-memory=1073741824"]).kv_cache_memory_bytes == 2**30


@pytest.mark.parametrize(("args", "message"), [
    (["--block-size"], "needs a value"),
    (["-tp", "two"], "-tp 'two' is not valid"),
    (["--kv-cache-memory-bytes", "1.5G"], "no decimals"),
])
def test_values_vllm_would_refuse_name_the_flag(args: list[str], message: str) -> None:
    with pytest.raises(BadLaunchArgs, match=message):
        read_flags(args)
