"""`multipart.py`: one plain field out of a multipart/form-data body."""

from __future__ import annotations

import httpx

from vllm_gateway.simulator.multipart import boundary, form_field


def encoded(files: dict, data: dict) -> tuple[bytes, bytes]:
    request = httpx.Request("POST", "http://x/", files=files, data=data)
    return request.read(), request.headers["content-type"].encode()


def test_the_model_field_is_found_beside_a_file() -> None:
    body, ctype = encoded({"file": ("a.wav", b"RIFF\r\n--not-a-boundary model", "audio/wav")},
                          {"model": "whisper-x", "language": "en"})
    assert form_field(body, ctype, "model") == "whisper-x"
    assert form_field(body, ctype, "language") == "en"
    assert form_field(body, ctype, "absent") is None


def test_a_file_part_of_that_name_is_not_a_field() -> None:
    body, ctype = encoded({"model": ("model.bin", b"weights", "application/octet-stream")}, {})
    assert form_field(body, ctype, "model") is None


def test_quoted_boundaries_and_bodies_without_one() -> None:
    assert boundary(b'multipart/form-data; boundary="abc def"') == b"abc def"
    assert boundary(b"multipart/form-data; charset=utf-8; boundary=xyz") == b"xyz"
    assert form_field(b"anything", b"multipart/form-data", "model") is None
    body = b'--xyz\r\nContent-Disposition: form-data; name="model"\r\n\r\nm1\r\n--xyz--\r\n'
    assert form_field(body, b"multipart/form-data; boundary=xyz", "model") == "m1"
