"""vLLM's request validation before a handler runs: the content type, the JSON, required fields.

The messages are FastAPI's and pydantic's as vLLM's handlers word them (`validate_json_request`,
`validation_exception_handler`); the captures in tests/fixtures/vllm-samples/ pin them down.
"""

from __future__ import annotations

from typing import Any

import orjson

from . import shapes
from .wire import Scope, Send, header, respond


async def json_object(scope: Scope, send: Send, body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object, or None after answering vLLM's 400."""
    ctype = (header(scope, b"content-type") or b"").split(b";")[0].strip()
    if ctype != b"application/json":
        message = "1 validation error:\n  Unsupported Media Type: Only 'application/json' is allowed"
        await respond(send, 400, shapes.error(message, "Bad Request", 400))
        return None
    try:
        data = orjson.loads(body)
    except orjson.JSONDecodeError:
        await respond(send, 400, shapes.json_error(body))
        return None
    if not isinstance(data, dict):
        await respond(send, 400, shapes.error("1 validation error:\n  Input should be an object", "Bad Request", 400, "body"))
        return None
    return data


async def required_strings(send: Send, data: dict[str, Any], names: tuple[str, ...]) -> bool:
    """Pydantic's `str` fields without defaults: False after answering the 400 for the ones wrong."""
    errors: list[dict[str, Any]] = []
    for name in names:
        if name not in data:
            errors.append({"type": "missing", "loc": f"body.{name}", "msg": "Field required",
                           "input": summarize(data)})
        elif not isinstance(data[name], str):
            errors.append({"type": "string_type", "loc": f"body.{name}", "msg": "Input should be a valid string",
                           "input": summarize(data[name])})
    if errors:
        await respond(send, 400, shapes.validation_error(errors))
    return not errors


def summarize(value: Any) -> Any:
    """vLLM's `_summarize_error_input`: containers described, not echoed."""
    if isinstance(value, str):
        return value if len(value) <= 200 else value[:200] + "...[truncated]"
    if isinstance(value, (list, tuple, set, frozenset, dict)):
        return f"<{type(value).__name__} of {len(value)} items>"
    text = str(value)
    return text if len(text) <= 200 else text[:200] + "...[truncated]"
