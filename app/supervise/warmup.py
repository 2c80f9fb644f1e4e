"""One tiny request of the kind a backend's model serves, so the first user request is not the slow one.

Run by the supervisor after a process became ready (`launch.warmup`) and by the residency manager
after a wake, before the requests held for it are let through.
"""

from __future__ import annotations

import logging

import httpx

from ..routing.backend import Backend

log = logging.getLogger("vllm_gateway.supervisor")


async def warm_up(backend: Backend) -> bool:
    """A generative model gets a 1-token chat completion (a plain completion when it has no chat
    template); a route the model does not serve answers 404 at once, so a 404 means "try an
    embedding". A failed warm-up is logged and does not keep the backend from serving; True when
    one request was answered with 200."""
    client = backend.upstreams[0].client
    model = backend.config.served_model_name
    attempts = [
        ("/v1/chat/completions", {"model": model, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}),
        ("/v1/completions", {"model": model, "prompt": "Hi", "max_tokens": 1}),
        ("/v1/embeddings", {"model": model, "input": "Hi"}),
    ]
    timeout = backend.timeouts.response_head
    for index, (path, body) in enumerate(attempts):
        try:
            response = await client.post(path, json=body, timeout=timeout)
        except httpx.HTTPError as exc:
            log.warning("backend %r: warm-up request to %s failed: %s", backend.name, path, type(exc).__name__)
            return False
        if response.status_code == 200:
            log.info("backend %r: warmed up with %s", backend.name, path)
            return True
        if index == 0 and response.status_code not in (400, 404):
            break
        if index == 1 and response.status_code != 404:
            break
    log.warning("backend %r: warm-up got %d from %s; serving anyway", backend.name, response.status_code, path)
    return False


__all__ = ["warm_up"]
