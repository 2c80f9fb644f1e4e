"""Reading a client's request body once, and finding (or rewriting) its `model` cheaply.

JSON bodies are parsed with orjson and re-serialised only when the model name must change.
Multipart bodies (audio uploads) are scanned for the `model` form field without decoding files.
"""

from __future__ import annotations

from typing import Any

import orjson

from ..errors import BadRequest, ClientGone, PayloadTooLarge, UnsupportedMediaType
from .headers import header


async def read_body(receive: Any, headers: list[tuple[bytes, bytes]], limit: int) -> bytes:
    """The whole body, refusing with 413 as soon as it is known to exceed `limit`."""
    declared = header(headers, b"content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise BadRequest("Content-Length is not a number") from None
        if size > limit:
            raise PayloadTooLarge(f"request body of {size} bytes is over the limit of {limit} bytes")
    chunks: list[bytes] = []
    total = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientGone()
        chunk = message.get("body", b"")
        if chunk:
            total += len(chunk)
            if total > limit:
                raise PayloadTooLarge(f"request body is over the limit of {limit} bytes")
            chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def media_type(headers: list[tuple[bytes, bytes]]) -> bytes:
    value = header(headers, b"content-type") or b""
    return value.split(b";", 1)[0].strip().lower()


def parse_json_object(body: bytes, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    kind = media_type(headers)
    if kind != b"application/json":
        shown = kind.decode("latin-1") or "none"
        raise UnsupportedMediaType(
            f"Content-Type must be application/json (got {shown}); send the request body as JSON"
        )
    if not body:
        raise BadRequest("request body is empty; send a JSON object")
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise BadRequest(f"request body must be a JSON object, not a JSON {_json_kind(data)}", code="invalid_json")
    return data


def model_of(data: dict[str, Any]) -> str | None:
    model = data.get("model")
    if model is None:
        return None
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` must be a non-empty string naming a model from GET /v1/models", param="model")
    return model


def with_model(data: dict[str, Any], model: str) -> bytes:
    data["model"] = model
    return orjson.dumps(data)


# -- multipart/form-data --------------------------------------------------------------------------

def multipart_boundary(headers: list[tuple[bytes, bytes]]) -> bytes:
    value = header(headers, b"content-type") or b""
    kind, _, params = value.partition(b";")
    if kind.strip().lower() != b"multipart/form-data":
        raise UnsupportedMediaType("Content-Type must be multipart/form-data for audio uploads")
    for param in params.split(b";"):
        key, _, val = param.strip().partition(b"=")
        if key.lower() == b"boundary" and val:
            return val.strip(b'"')
    raise BadRequest("multipart/form-data without a boundary parameter")


def find_form_field(body: bytes, boundary: bytes, name: bytes) -> tuple[int, int] | None:
    """Byte span of a plain (non-file) form field's value, or None when absent."""
    delimiter = b"--" + boundary
    position = body.find(delimiter)
    while position != -1:
        start = position + len(delimiter)
        if body[start : start + 2] == b"--":
            return None
        head_end = body.find(b"\r\n\r\n", start)
        if head_end == -1:
            return None
        head = body[start:head_end].lower()
        following = body.find(b"\r\n" + delimiter, head_end + 4)
        if following == -1:
            return None
        if b"content-disposition" in head and _disposition_name(head) == name.lower() and b"filename=" not in head:
            return head_end + 4, following
        position = following + 2
    return None


def _disposition_name(head: bytes) -> bytes | None:
    marker = head.find(b' name="')
    if marker == -1:
        marker = head.find(b';name="')
    if marker == -1:
        return None
    start = marker + 7
    end = head.find(b'"', start)
    return head[start:end] if end != -1 else None


def multipart_model(body: bytes, headers: list[tuple[bytes, bytes]]) -> tuple[str | None, tuple[int, int] | None]:
    span = find_form_field(body, multipart_boundary(headers), b"model")
    if span is None:
        return None, None
    raw = body[span[0] : span[1]]
    try:
        model = raw.decode("utf-8").strip()
    except UnicodeDecodeError:
        raise BadRequest("the `model` form field is not UTF-8 text", param="model") from None
    if not model:
        raise BadRequest("the `model` form field is empty", param="model")
    return model, span


def replace_span(body: bytes, span: tuple[int, int], value: str) -> bytes:
    return body[: span[0]] + value.encode() + body[span[1] :]


def _json_kind(value: Any) -> str:
    return {list: "array", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")
