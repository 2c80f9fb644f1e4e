"""How the gateway is served: uvloop and httptools named (`app.serving`)."""

from __future__ import annotations

import pickle

from vllm_gateway import downstream, serving


def test_fast_options_name_uvloop_and_the_gateway_protocol_and_survive_pickling() -> None:
    options = serving.fast_options()
    assert options["loop"] == "uvloop" and options["http"] is downstream.GatewayHttpToolsProtocol
    assert options["server_header"] is False and options["proxy_headers"] is False
    assert serving.fast_options(access_log=True)["proxy_headers"] is True  # real client addresses in the log
    # several workers are spawned processes: uvicorn hands them the configuration pickled
    assert pickle.loads(pickle.dumps(options["http"])) is downstream.GatewayHttpToolsProtocol
