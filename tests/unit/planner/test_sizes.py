"""Sizes: the gateway's grammar (GB decimal, GiB binary, bare letters as vLLM) and vLLM's own."""

from __future__ import annotations

import pytest

from vllm_gateway.planner.sizes import GIB, gib, parse_size, vllm_int


@pytest.mark.parametrize(("text", "expected"), [
    ("48GB", 48 * 10**9),
    ("48 GB", 48 * 10**9),
    ("48gb", 48 * 10**9),
    ("48GiB", 48 * GIB),
    ("45.5GiB", int(45.5 * GIB)),
    ("45.5G", int(45.5 * GIB)),  # bare upper-case letter: binary, as vLLM's 8G
    ("45.5g", int(45.5 * 10**9)),  # bare lower-case letter: decimal, as vLLM's 8g
    ("46068MiB", 46068 * 2**20),  # what nvidia-smi prints for an L40S
    ("1TB", 10**12),
    ("48000000000", 48 * 10**9),
    ("512B", 512),
    (80 * GIB, 80 * GIB),
])
def test_sizes_people_write(text: str | int, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("text", ["", "GB", "48XB", "-1GB", "0", "48 G B", "1.5.2G", True])
def test_what_is_not_a_size_is_refused_with_the_accepted_forms(text: object) -> None:
    with pytest.raises(ValueError, match=r"size|unit|positive"):
        parse_size(text)  # type: ignore[arg-type]


@pytest.mark.parametrize(("text", "expected"), [
    ("64M", 64 * 2**20), ("1K", 1024), ("1k", 1000), ("25.6k", 25600), ("8g", 8 * 10**9), ("4096", 4096),
])
def test_vllm_human_readable_ints(text: str, expected: int) -> None:
    assert vllm_int(text) == expected


def test_vllm_refuses_decimals_with_binary_suffixes_and_so_do_we() -> None:
    with pytest.raises(ValueError, match="no decimals with the binary suffix G"):
        vllm_int("1.5G")


def test_gib_is_two_decimals() -> None:
    assert gib(16381470720) == "15.26 GiB"
