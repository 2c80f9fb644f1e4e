"""The contract between the gateway's server protocol and the installed uvicorn: every uvicorn
attribute the gateway uses exists there, and the lists in `http.uvicorn_compat` are complete."""

from __future__ import annotations

import ast
import asyncio
import inspect
import re
import tomllib
from pathlib import Path

import uvicorn
from uvicorn.config import Config
from uvicorn.server import ServerState

from vllm_gateway.http import downstream, lean_cycle, protocol, uvicorn_compat
from vllm_gateway.http.downstream import HeadHoldingTransport
from vllm_gateway.http.lean_cycle import LeanCycle

ROOT = Path(__file__).resolve().parents[3]


class _Transport(asyncio.Transport):
    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def get_extra_info(self, name: str, default: object = None) -> object:
        return {"peername": ("127.0.0.1", 5000), "sockname": ("127.0.0.1", 8080)}.get(name, default)

    def write(self, data: bytes) -> None:  # type: ignore[override]
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return False


async def _app(scope: dict, receive: object, send: object) -> None:
    return None


def _self_attributes(cls: type) -> set[str]:
    """`self.X` names read or written in a class's own methods."""
    tree = ast.parse(inspect.getsource(cls))
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "self"}


def _names_on(module: object, variable: str) -> set[str]:
    """`<variable>.X` names used in a module's source (e.g. what it touches on a `cycle`)."""
    tree = ast.parse(inspect.getsource(module))  # type: ignore[arg-type]
    return {node.attr for node in ast.walk(tree)
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == variable}


def test_the_installed_uvicorn_is_one_the_protocol_was_tested_with_and_pyproject_pins_the_same() -> None:
    low, high = uvicorn_compat.SUPPORTED
    assert low <= uvicorn_compat.version() < high, uvicorn.__version__
    assert uvicorn_compat.fast_path_problem() is None
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    (pin,) = [d for d in deps if d.startswith("uvicorn")]
    assert re.search(rf">={low[0]}\.{low[1]},<{high[0]}\.{high[1]}\b", pin), pin


def test_every_protocol_attribute_the_gateway_uses_exists_on_uvicorns_protocol() -> None:
    used = _self_attributes(protocol.GatewayHttpToolsProtocol)
    ours = {"_lean_routes", "_start_lean"}
    assert used - ours <= set(uvicorn_compat.PROTOCOL_ATTRIBUTES), used - ours - set(uvicorn_compat.PROTOCOL_ATTRIBUTES)
    loop = asyncio.new_event_loop()
    try:
        stock = uvicorn_compat.HttpToolsProtocol(Config(_app), ServerState(), {}, _loop=loop)
        stock.connection_made(_Transport())
        stock.data_received(b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 2\r\n\r\n")
        missing = [name for name in uvicorn_compat.PROTOCOL_ATTRIBUTES if not hasattr(stock, name)]
        assert missing == []
    finally:
        loop.close()


def test_every_cycle_attribute_exists_on_uvicorns_cycle_and_on_the_lean_cycle() -> None:
    touched = (_names_on(downstream, "cycle") | _names_on(protocol, "cycle")) - {"scope"}
    assert touched <= set(uvicorn_compat.CYCLE_ATTRIBUTES), touched - set(uvicorn_compat.CYCLE_ATTRIBUTES)
    loop = asyncio.new_event_loop()
    try:
        transport = _Transport()
        flow = uvicorn_compat.FlowControl(transport)
        stock = uvicorn_compat.RequestResponseCycle(
            scope={}, transport=transport, flow=flow, logger=None, access_logger=None, access_log=False,
            default_headers=[], message_event=asyncio.Event(), expect_100_continue=False, keep_alive=True,
            on_response=lambda: None)
        lean = LeanCycle({}, HeadHoldingTransport(transport, loop), flow, loop, [], True, lambda: None, None)
        for cycle in (stock, lean):
            missing = [name for name in uvicorn_compat.CYCLE_ATTRIBUTES if not hasattr(cycle, name)]
            assert missing == [], type(cycle).__name__
    finally:
        loop.close()


def test_no_module_outside_http_imports_uvicorn_or_httptools() -> None:
    offenders = []
    for path in (ROOT / "app").rglob("*.py"):
        if path.parent.name == "http" or "simulator" in path.parts:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else [])
            if any(n.split(".")[0] in ("uvicorn", "httptools") for n in names):
                offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
    inside = [m for m in (protocol, lean_cycle, downstream) if "import uvicorn" in inspect.getsource(m)]
    assert inside == []  # within http/, only uvicorn_compat imports uvicorn itself
