"""Resolving the model a request names, the same way for HTTP routes and realtime sessions."""

from __future__ import annotations

from ..errors import BadRequest, ModelNotFound
from .registry import Registry, Target


def resolve_model(registry: Registry, given: str | None, default_model: str | None,
                  missing: str = "`model` is required") -> tuple[Target, str]:
    """The target of a request and the name it used (`default_model` when it names none).

    `missing` starts the message when neither is there (the realtime route says where `model`
    belongs in its protocol)."""
    model = given if given is not None else default_model
    if model is None:
        raise BadRequest(f"{missing}: name one of {model_list(registry.model_names())}",
                         param="model", code="missing_model")
    target = registry.resolve(model)
    if target is None:
        raise ModelNotFound(
            f"The model `{model}` does not exist. Available models: {model_list(registry.model_names())}",
            param="model")
    return target, model


def model_list(names: list[str]) -> str:
    if not names:
        return "(no models: no backend has reported any yet; see GET /status)"
    return ", ".join(sorted(names))


__all__ = ["model_list", "resolve_model"]
