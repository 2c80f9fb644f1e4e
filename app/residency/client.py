"""vLLM's sleep-mode dev routes, as the residency manager uses them (`VLLM_SERVER_DEV_MODE=1`).

From vLLM's `entrypoints/serve/dev/{sleep,rpc,cache}/api_router.py` and `v1/engine/core.py`:
- `POST /sleep?level=L&mode=abort` blocks until asleep and answers `{"status": "sleeping", "level": L}`
  (0.11 answered an empty 200). Level 1 copies the weights to host RAM and drops the KV cache;
  level 2 drops both. `mode=abort` aborts what still runs: the gateway has drained first, so it
  only guards against requests that reached vLLM some other way;
- `POST /wake_up[?tags=weights|kv_cache]` answers `{"status": "awake"|"sleeping", "tags": ...}`
  (`sleeping`: a partial wake);
- `GET /is_sleeping` answers `{"is_sleeping": bool}`;
- `POST /collective_rpc {"method": "reload_weights"}` reloads the weights from the model's files
  on every worker (`results`, or an empty 200 when the workers return nothing);
- `POST /reset_prefix_cache` answers `{"success": bool}` (false while blocks are held).

A level-2 wake is the full sequence vLLM's docs give: weights back (`tags=weights`), the weights
reloaded (their memory came back as garbage), the KV cache back (`tags=kv_cache`), and the prefix
cache reset, since its entries pointed at blocks that were dropped. Every failure is a `SwapFailed`
whose message says what answered what.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import orjson


class SwapFailed(Exception):
    """A sleep or wake-up the backend did not complete."""


class SleepClient:
    def __init__(self, client: httpx.AsyncClient, timeout: float) -> None:
        self.client = client
        self.timeout = timeout

    async def sleep(self, level: int) -> None:
        await self._post("/sleep", params={"level": str(level), "mode": "abort"})

    async def wake_up(self, tags: list[str] | None = None) -> bool:
        """True when fully awake (no memory tag still asleep)."""
        answer = await self._post("/wake_up", params=[("tags", tag) for tag in tags or ()])
        return not isinstance(answer, dict) or answer.get("status") != "sleeping"

    async def is_sleeping(self) -> bool:
        answer = await self._call("GET", "/is_sleeping")
        if not isinstance(answer, dict) or not isinstance(answer.get("is_sleeping"), bool):
            raise SwapFailed(f"GET /is_sleeping answered {answer!r}, not {{\"is_sleeping\": true|false}}")
        return answer["is_sleeping"]

    async def reload_weights(self) -> None:
        await self._post("/collective_rpc", body={"method": "reload_weights"})

    async def reset_prefix_cache(self) -> bool:
        answer = await self._post("/reset_prefix_cache")
        return not isinstance(answer, dict) or bool(answer.get("success", True))

    async def wake(self, level: int) -> None:
        """Everything the level needs to serve again, then a check that vLLM says it is awake."""
        if level >= 2:
            await self.wake_up(["weights"])
            await self.reload_weights()
            await self.wake_up(["kv_cache"])
            await self.reset_prefix_cache()
        elif not await self.wake_up():
            raise SwapFailed("POST /wake_up answered status sleeping: some memory is still asleep")
        if await self.is_sleeping():
            raise SwapFailed("GET /is_sleeping still answers true after the wake-up")

    async def _post(self, path: str, *, params: Any = None, body: dict[str, Any] | None = None) -> Any:
        return await self._call("POST", path, params=params, body=body)

    async def _call(self, method: str, path: str, *, params: Any = None, body: dict[str, Any] | None = None) -> Any:
        try:
            async with asyncio.timeout(self.timeout):  # the whole call: httpx's timeouts bound each read only
                response = await self.client.request(method, path, params=params, json=body, timeout=self.timeout)
        except (TimeoutError, httpx.TimeoutException):
            raise SwapFailed(f"{method} {path} did not answer within {self.timeout:g} s") from None
        except httpx.HTTPError as exc:
            raise SwapFailed(f"{method} {path} failed: {type(exc).__name__}") from None
        if response.status_code == 404:
            raise SwapFailed(f"{method} {path} answered 404: vLLM serves its sleep routes only with "
                             f"VLLM_SERVER_DEV_MODE=1 (the gateway sets it for `swap: sleep`; check launch.env)")
        if response.status_code != 200:
            raise SwapFailed(f"{method} {path} answered {response.status_code}: {_detail(response.content)}")
        if not response.content:
            return None
        try:
            return orjson.loads(response.content)
        except orjson.JSONDecodeError:
            return None


def _detail(content: bytes) -> str:
    """vLLM's error message when it sent one, else the start of the body."""
    try:
        data = orjson.loads(content)
    except orjson.JSONDecodeError:
        return content[:200].decode("utf-8", "replace") or "(empty body)"
    error = data.get("error") if isinstance(data, dict) else None
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])[:500]
    if isinstance(data, dict) and isinstance(data.get("detail"), str):
        return str(data["detail"])[:500]
    return content[:200].decode("utf-8", "replace")


__all__ = ["SleepClient", "SwapFailed"]
