"""The exchanges in `vllm_dev_sleep_lora.json`, recorded from a real vLLM 0.32.0 CPU server (its
`about` says how), replayed against a simulator: same status, content type and body, byte for byte."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from vllm_gateway.simulator import write_adapter

RECORDED = json.loads((Path(__file__).with_name("vllm_dev_sleep_lora.json")).read_text(encoding="utf-8"))
RECORDS: dict[str, dict[str, Any]] = {r["name"]: r for r in RECORDED["records"]}
ADAPTERS_THEN = "/tmp/simwork/adapters"  # where the recorded run kept its adapter folders


def record(name: str) -> dict[str, Any]:
    return RECORDS[name]


def make_adapters(folder: Path) -> Path:
    """The adapter folders of the recorded run, good and bad, under `folder`."""
    for name in ("good8", "good8b", "good8c"):
        write_adapter(folder / name, rank=8, base_model="tiny-chat")
    write_adapter(folder / "rank64", rank=64)
    write_adapter(folder / "broken").joinpath("adapter_config.json").write_text("{not json")
    (write_adapter(folder / "noweights") / "adapter_model.safetensors").unlink()
    write_adapter(folder / "missing").joinpath("adapter_config.json").write_text(
        json.dumps({"r": 8, "target_modules": ["q_proj"]}))
    write_adapter(folder / "dora", use_dora=True)
    write_adapter(folder / "biased", bias="all")
    (write_adapter(folder / "rank0", rank=0) / "adapter_model.safetensors").unlink()
    (folder / "emptydir").mkdir()
    (folder / "afile").write_text("x")
    return folder


async def replay(client: httpx.AsyncClient, name: str, adapters: Path | None = None) -> httpx.Response:
    """Send the recorded request (adapter paths moved to `adapters`) and check the answer is the recorded one."""
    rec = RECORDS[name]
    body = rec["request_body"]
    if adapters is not None:
        body = body.replace(ADAPTERS_THEN, str(adapters))
    ctype = "text/plain" if name == "load_text_plain" else "application/json"
    response = await client.request(rec["method"], rec["url"], content=body.encode() or None,
                                    headers={"content-type": ctype} if body else {})
    assert response.status_code == rec["status"], (name, response.text)
    assert response.text == rec["body"], name
    assert response.headers.get("content-type") == rec["headers"].get("content-type"), name
    return response


def sleep_state_lines(page: str, model: str = "tiny-chat") -> list[str]:
    return [line for line in page.splitlines() if line.startswith("vllm:engine_sleep_state{")
            and f'model_name="{model}"' in line]


def recorded_sleep_state(name: str) -> list[str]:
    return sleep_state_lines(RECORDS[name]["body"])


def payloads(text: str) -> list[Any]:
    return [json.loads(p) if p != "[DONE]" else p for p in re.findall(r"^data: (.*)$", text, re.MULTILINE)]
