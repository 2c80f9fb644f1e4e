"""How the gateway is served (`http.serving`): uvloop and httptools named, the gateway's own
protocol unless turned off, and one set of options for every server."""

from __future__ import annotations

import pickle

from vllm_gateway.http import protocol, serving


def test_options_name_uvloop_and_the_gateway_protocol_and_survive_pickling() -> None:
    options = serving.options()
    assert options["loop"] == "uvloop" and options["http"] is protocol.GatewayHttpToolsProtocol
    assert options["server_header"] is False and options["proxy_headers"] is False
    assert serving.options(access_log=True)["proxy_headers"] is True  # real client addresses in the log
    # several workers are spawned processes: uvicorn hands them the configuration pickled
    assert pickle.loads(pickle.dumps(options["http"])) is protocol.GatewayHttpToolsProtocol


def test_without_the_fast_path_stock_uvicorn_serves_with_httptools() -> None:
    options = serving.options(fast_path=False)
    assert options["http"] == "httptools" and options["loop"] == "uvloop"


def test_every_server_gets_the_same_backlog_and_keep_alive() -> None:
    options = serving.options()
    assert options["backlog"] == serving.BACKLOG == 4096 and options["timeout_keep_alive"] == 5
