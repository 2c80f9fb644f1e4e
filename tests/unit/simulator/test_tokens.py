"""`tokens.py`: /tokenize and /detokenize with vLLM's fields."""

from __future__ import annotations

import pytest

from .replay import CHAT_SIM, shaped_as_captured


@pytest.mark.parametrize("name", ["tokenize.txt", "detokenize.txt"])
def test_tokenizer_routes_have_vllm_fields(name: str) -> None:
    shaped_as_captured(name, **CHAT_SIM)
