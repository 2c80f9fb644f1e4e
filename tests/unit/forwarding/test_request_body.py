"""Reading a request body once and finding (or rewriting) its `model`: JSON and multipart."""

from __future__ import annotations

import asyncio
import email.parser
import email.policy
from typing import Any

import httpx
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vllm_gateway.errors import BadRequest, PayloadTooLarge, UnsupportedMediaType
from vllm_gateway.forwarding import request_body as bodies

JSON = [(b"content-type", b"application/json")]


def receiver(*chunks: bytes, disconnect: bool = False):
    """An ASGI `receive` that hands out `chunks` (then a disconnect, if asked), counting calls."""
    messages: list[dict[str, Any]] = [
        {"type": "http.request", "body": c, "more_body": i < len(chunks) - 1} for i, c in enumerate(chunks)
    ]
    if disconnect:
        messages = messages[:-1] + [{"type": "http.disconnect"}] if messages else [{"type": "http.disconnect"}]
    calls = []

    async def receive() -> dict[str, Any]:
        calls.append(1)
        return messages.pop(0)

    receive.calls = calls  # type: ignore[attr-defined]
    return receive


def read(receive, headers=(), limit: int = 1024) -> bytes:
    return asyncio.run(bodies.read_body(receive, list(headers), limit))


# -- reading ------------------------------------------------------------------------------------------

def test_reads_one_or_many_chunks() -> None:
    assert read(receiver(b'{"a": 1}')) == b'{"a": 1}'
    assert read(receiver(b'{"a"', b"", b": 1}")) == b'{"a": 1}'
    assert read(receiver(b"")) == b""


def test_declared_length_over_the_limit_is_refused_before_reading() -> None:
    receive = receiver(b"x" * 10)
    with pytest.raises(PayloadTooLarge) as caught:
        read(receive, [(b"content-length", b"2048")], limit=1024)
    assert caught.value.status == 413 and "2048" in caught.value.message
    assert receive.calls == []


def test_chunked_body_over_the_limit_is_refused_midway() -> None:
    receive = receiver(b"x" * 600, b"x" * 600, b"x" * 600)
    with pytest.raises(PayloadTooLarge):
        read(receive, limit=1024)
    assert len(receive.calls) == 2  # stopped at the chunk that crossed the limit


def test_bad_content_length() -> None:
    with pytest.raises(BadRequest, match="Content-Length"):
        read(receiver(b"{}"), [(b"content-length", b"ten")])


def test_client_leaving_while_sending_the_body() -> None:
    with pytest.raises(bodies.ClientGone):
        read(receiver(b'{"a"', b"never", disconnect=True))


# -- JSON -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("content_type", [b"application/json", b"application/json; charset=utf-8", b"Application/JSON ;charset=UTF-8"])
def test_json_content_types_accepted(content_type: bytes) -> None:
    assert bodies.parse_json_object(b'{"model": "m"}', [(b"content-type", content_type)]) == {"model": "m"}


@pytest.mark.parametrize("content_type", [None, b"text/plain", b"application/x-www-form-urlencoded", b"multipart/form-data; boundary=x",
                                          b"application/jsonl"])
def test_other_content_types_are_415(content_type: bytes | None) -> None:
    headers = [(b"content-type", content_type)] if content_type else []
    with pytest.raises(UnsupportedMediaType) as caught:
        bodies.parse_json_object(b'{"model": "m"}', headers)
    assert caught.value.status == 415
    shown = content_type.split(b";")[0].decode() if content_type else "none"
    assert shown in caught.value.message and "application/json" in caught.value.message


@pytest.mark.parametrize(("raw", "kind"), [
    (b"[1, 2]", "array"), (b'"text"', "string"), (b"3", "number"), (b"2.5", "number"), (b"null", "null"), (b"true", "boolean"),
])
def test_json_that_is_not_an_object(raw: bytes, kind: str) -> None:
    with pytest.raises(BadRequest) as caught:
        bodies.parse_json_object(raw, JSON)
    assert caught.value.status == 400 and caught.value.code == "invalid_json" and f"not a JSON {kind}" in caught.value.message


@pytest.mark.parametrize("raw", [b'{"model": ', b"{'model': 'm'}", b"not json", b'{"a": 1} trailing', b"\xff\xfe"])
def test_invalid_json(raw: bytes) -> None:
    with pytest.raises(BadRequest) as caught:
        bodies.parse_json_object(raw, JSON)
    assert caught.value.code == "invalid_json" and "not valid JSON" in caught.value.message


def test_empty_json_body() -> None:
    with pytest.raises(BadRequest, match="empty"):
        bodies.parse_json_object(b"", JSON)


def test_model_field() -> None:
    assert bodies.model_of({"model": "m", "messages": []}) == "m"
    assert bodies.model_of({"messages": []}) is None
    assert bodies.model_of({"model": None}) is None  # like vLLM: null is "not given"


@pytest.mark.parametrize("value", ["", 5, 1.5, True, ["m"], {"name": "m"}])
def test_model_that_is_not_a_non_empty_string(value: Any) -> None:
    with pytest.raises(BadRequest) as caught:
        bodies.model_of({"model": value})
    assert caught.value.param == "model" and caught.value.status == 400


def test_with_model_rewrites_only_the_model() -> None:
    data = {"model": "alias", "messages": [{"role": "user", "content": "h\u00e9"}], "stream": True, "n": 2}
    rewritten = orjson.loads(bodies.with_model(dict(data), "canonical"))
    assert rewritten == {**data, "model": "canonical"}


def test_with_model_adds_a_missing_model() -> None:
    assert orjson.loads(bodies.with_model({"prompt": "x"}, "default")) == {"prompt": "x", "model": "default"}


# -- multipart ------------------------------------------------------------------------------------------

def multipart(data: dict[str, str], files: dict[str, tuple[str, bytes, str]]) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    request = httpx.Request("POST", "http://x/v1/audio/transcriptions", data=data, files=files)
    return request.read(), [(b"content-type", request.headers["content-type"].encode())]


def parse_form(body: bytes, headers: list[tuple[bytes, bytes]]) -> list[tuple[str, str | None, bytes]]:
    """A reference parser (the standard library's MIME parser): (name, filename, content) per part."""
    head = b"Content-Type: " + bodies.header(headers, b"content-type") + b"\r\n\r\n"
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(head + body)
    parts = []
    for part in message.iter_parts():
        parts.append((part.get_param("name", header="content-disposition"), part.get_filename(),
                      part.get_payload(decode=True)))
    return parts


AUDIO = b"RIFF\x00\x01WAVE fake audio"


def test_model_form_field_is_found() -> None:
    body, headers = multipart({"model": "whisper", "language": "en"}, {"file": ("a.wav", AUDIO, "audio/wav")})
    model, span = bodies.multipart_model(body, headers)
    assert model == "whisper" and body[span[0]:span[1]] == b"whisper"


def test_model_after_a_file_whose_content_mimics_a_model_field() -> None:
    boundary = b"b0undary"
    trap = (b'--not-the-boundary\r\nContent-Disposition: form-data; name="model"\r\n\r\nfake-model\r\n'
            b'name="model" \r\n\r\n' + AUDIO)
    body = (b"--" + boundary + b'\r\nContent-Disposition: form-data; name="file"; filename="model.wav"\r\n'
            b"Content-Type: audio/wav\r\n\r\n" + trap + b"\r\n"
            b"--" + boundary + b'\r\nContent-Disposition: form-data; name="model"\r\n\r\nwhisper\r\n'
            b"--" + boundary + b"--\r\n")
    headers = [(b"content-type", b"multipart/form-data; boundary=" + boundary)]
    model, span = bodies.multipart_model(body, headers)
    assert model == "whisper"
    rewritten = bodies.replace_span(body, span, "openai/whisper-large-v3")
    parts = parse_form(rewritten, headers)
    assert parts == [("file", "model.wav", trap), ("model", None, b"openai/whisper-large-v3")]


def test_a_file_part_named_model_is_not_the_model_field() -> None:
    body, headers = multipart({}, {"model": ("model.bin", b"weights", "application/octet-stream")})
    assert bodies.multipart_model(body, headers) == (None, None)


def test_a_field_whose_name_starts_with_model_is_not_the_model_field() -> None:
    body, headers = multipart({"model_name": "x", "models": "y"}, {"file": ("a.wav", AUDIO, "audio/wav")})
    assert bodies.multipart_model(body, headers) == (None, None)


def test_quoted_boundary_and_header_case() -> None:
    body = b'--xyz\r\nCONTENT-DISPOSITION: form-data; name="model"\r\n\r\nm1\r\n--xyz--\r\n'
    headers = [(b"content-type", b'Multipart/Form-Data; charset=utf-8; boundary="xyz"')]
    assert bodies.multipart_model(body, headers)[0] == "m1"


def test_multipart_errors() -> None:
    body, headers = multipart({"model": "m"}, {"file": ("a.wav", AUDIO, "audio/wav")})
    with pytest.raises(UnsupportedMediaType):
        bodies.multipart_model(body, JSON)
    with pytest.raises(BadRequest, match="boundary"):
        bodies.multipart_model(body, [(b"content-type", b"multipart/form-data")])
    empty, headers = multipart({"model": ""}, {"file": ("a.wav", AUDIO, "audio/wav")})
    with pytest.raises(BadRequest, match="empty"):
        bodies.multipart_model(empty, headers)
    binary = b'--q\r\nContent-Disposition: form-data; name="model"\r\n\r\n\xff\xfe\r\n--q--\r\n'
    with pytest.raises(BadRequest, match="UTF-8"):
        bodies.multipart_model(binary, [(b"content-type", b"multipart/form-data; boundary=q")])


def test_truncated_multipart_has_no_model() -> None:
    body, headers = multipart({"model": "m"}, {"file": ("a.wav", AUDIO, "audio/wav")})
    cut = body.index(b"\r\n\r\nm\r\n")
    assert bodies.multipart_model(body[:cut], headers) == (None, None)  # head of the field not complete
    assert bodies.multipart_model(body[: cut + 5], headers) == (None, None)  # value without its delimiter


field_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=10).filter(lambda n: n != "model")
texts = st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\r\n"), max_size=30)
file_bytes = st.one_of(st.binary(max_size=200), st.sampled_from([
    b'name="model"', b'Content-Disposition: form-data; name="model"\r\n\r\nfake\r\n', b"\r\n\r\n", b"--",
]))


@settings(max_examples=150, deadline=None)
@given(
    before=st.dictionaries(field_names, texts, max_size=3),
    after=st.dictionaries(field_names, texts, max_size=3),
    files=st.lists(file_bytes, max_size=3),
    model=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Zs", "Cc")), min_size=1, max_size=40),
    replacement=st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), min_size=1, max_size=40),
)
def test_multipart_model_found_and_replaced_anywhere(before, after, files, model, replacement) -> None:
    """Whatever surrounds it, the model field is found, and replacing it changes nothing else."""
    boundary = b"hypothesis-boundary-7d1f"
    parts = [(name, None, value.encode()) for name, value in before.items()]
    parts += [(f"file{i}", f"f{i}.wav", content) for i, content in enumerate(files)]
    parts.append(("model", None, model.encode()))
    parts += [(name, None, value.encode()) for name, value in after.items() if name not in before]
    body = b""
    for name, filename, content in parts:
        disposition = f'form-data; name="{name}"' + (f'; filename="{filename}"' if filename else "")
        body += b"--" + boundary + b"\r\nContent-Disposition: " + disposition.encode() + b"\r\n"
        if filename:
            body += b"Content-Type: application/octet-stream\r\n"
        body += b"\r\n" + content + b"\r\n"
    body += b"--" + boundary + b"--\r\n"
    headers = [(b"content-type", b"multipart/form-data; boundary=" + boundary)]

    found, span = bodies.multipart_model(body, headers)
    assert found == model.strip()
    rewritten = bodies.replace_span(body, span, replacement)
    expected = [(n, f, replacement.encode() if n == "model" else c) for n, f, c in parts]
    assert parse_form(rewritten, headers) == expected
