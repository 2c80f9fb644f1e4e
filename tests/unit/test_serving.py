"""How the gateway is served: uvloop and httptools named, and a response head written together
with the body that follows it (`app.serving`)."""

from __future__ import annotations

import asyncio
import pickle

from app import serving


class FakeTransport:
    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.closed = self.aborted = False

    def write(self, data: bytes) -> None:
        self.writes.append(data)

    def is_closing(self) -> bool:
        return self.closed or self.aborted

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.aborted = True

    def get_extra_info(self, name: str) -> str:
        return f"info:{name}"


HEAD = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n"


def _holding() -> tuple[FakeTransport, serving._HeadHoldingTransport, asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    real = FakeTransport()
    return real, serving._HeadHoldingTransport(real, loop), loop


def test_head_and_body_leave_in_one_write() -> None:
    real, holding, loop = _holding()
    holding.write(HEAD)
    assert real.writes == []
    holding.write(b"ok")
    assert real.writes == [HEAD + b"ok"]
    loop.run_until_complete(asyncio.sleep(0))  # the scheduled flush finds nothing left
    assert real.writes == [HEAD + b"ok"]
    loop.close()


def test_a_head_alone_goes_out_in_the_next_loop_iteration() -> None:
    real, holding, loop = _holding()
    holding.write(HEAD)
    loop.run_until_complete(asyncio.sleep(0))
    assert real.writes == [HEAD]
    holding.write(b"5\r\nhello\r\n")  # later body bytes pass straight through
    assert real.writes == [HEAD, b"5\r\nhello\r\n"]
    loop.close()


def test_close_sends_a_held_head_first_and_abort_drops_it() -> None:
    real, holding, loop = _holding()
    holding.write(HEAD)
    holding.close()
    assert real.writes == [HEAD] and real.closed
    real, holding, loop2 = _holding()
    holding.write(HEAD)
    holding.abort()
    loop2.run_until_complete(asyncio.sleep(0))
    assert real.writes == [] and real.aborted
    assert holding.get_extra_info("peername") == "info:peername"  # everything else passes through
    loop.close()
    loop2.close()


def test_fast_options_name_uvloop_and_the_head_holding_protocol_and_survive_pickling() -> None:
    options = serving.fast_options()
    assert options["loop"] == "uvloop" and options["http"] is serving.HeadHoldingHttpToolsProtocol
    assert options["server_header"] is False and options["proxy_headers"] is False
    assert serving.fast_options(access_log=True)["proxy_headers"] is True  # real client addresses in the log
    # several workers are spawned processes: uvicorn hands them the configuration pickled
    assert pickle.loads(pickle.dumps(options["http"])) is serving.HeadHoldingHttpToolsProtocol
