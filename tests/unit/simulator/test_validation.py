"""`validation.py`: the content type and JSON checks vLLM runs before a handler."""

from __future__ import annotations

import pytest

from .replay import CHAT_SIM, exactly_as_captured


@pytest.mark.parametrize("name", ["err_wrong_content_type.txt", "err_malformed_json.txt"])
def test_bad_bodies_are_refused_like_vllm_byte_for_byte(name: str) -> None:
    exactly_as_captured(name, **CHAT_SIM)
