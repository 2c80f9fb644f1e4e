"""The one error shape, and the status each kind of gateway failure maps to."""

from __future__ import annotations

import orjson
import pytest

from vllm_gateway import errors


@pytest.mark.parametrize(("cls", "status", "type_", "code"), [
    (errors.BadRequest, 400, "invalid_request_error", "invalid_request"),
    (errors.Unauthorized, 401, "authentication_error", "invalid_api_key"),
    (errors.ModelNotFound, 404, "invalid_request_error", "model_not_found"),
    (errors.MethodNotAllowed, 405, "invalid_request_error", "method_not_allowed"),
    (errors.PayloadTooLarge, 413, "invalid_request_error", "request_too_large"),
    (errors.UnsupportedMediaType, 415, "invalid_request_error", "unsupported_media_type"),
    (errors.TooManyRequests, 429, "rate_limit_error", "rate_limit_exceeded"),
    (errors.BadGateway, 502, "upstream_error", "bad_gateway"),
    (errors.ServiceUnavailable, 503, "service_unavailable", "backend_unavailable"),
    (errors.GatewayTimeout, 504, "timeout_error", "upstream_timeout"),
])
def test_each_failure_has_its_status_and_openai_body(cls, status: int, type_: str, code: str) -> None:
    error = cls("what went wrong")
    assert isinstance(error, errors.GatewayError) and error.status == status
    assert orjson.loads(error.body()) == {"error": {"message": "what went wrong", "type": type_, "param": None, "code": code}}


def test_param_code_status_and_headers_can_be_given() -> None:
    error = errors.BadRequest("`model` is required", param="model", code="missing_model")
    assert orjson.loads(error.body())["error"] == {"message": "`model` is required", "type": "invalid_request_error",
                                                   "param": "model", "code": "missing_model"}
    unavailable = errors.ServiceUnavailable("later", headers={"Retry-After": "3"})
    assert unavailable.headers == {"Retry-After": "3"} and errors.BadRequest("x").headers == {}
    assert errors.GatewayError("custom", status=418).status == 418


def test_class_defaults_are_not_changed_by_instances() -> None:
    errors.BadRequest("x", code="special", status=422)
    assert (errors.BadRequest.status, errors.BadRequest.code) == (400, "invalid_request")


def test_error_body_keeps_integer_codes_like_vllm() -> None:
    assert orjson.loads(errors.error_body("m", "BadRequestError", "max_tokens", 400)) == {
        "error": {"message": "m", "type": "BadRequestError", "param": "max_tokens", "code": 400}}


def test_error_body_escapes_message_text() -> None:
    body = errors.error_body('quote " and newline \n and \u00e9', "t")
    assert orjson.loads(body)["error"]["message"] == 'quote " and newline \n and \u00e9'


def test_sse_error_event_ends_the_stream() -> None:
    event = errors.sse_error_event(errors.GatewayTimeout("stream stopped"))
    first, done, rest = event.split(b"\n\n")
    assert first.startswith(b"data: ") and orjson.loads(first[6:])["error"]["code"] == "upstream_timeout"
    assert done == b"data: [DONE]" and rest == b""
