"""Model routes as served by the gateway's own protocol (`app.downstream`, `app.lean_cycle`): raw
HTTP/1.1 over a socket against a real gateway, where a client would notice if framing, keep-alive
or ordering went wrong; and requests that the lean path leaves to uvicorn still answered."""

from __future__ import annotations

import json
import socket
import time
from collections import Counter

import pytest

from tests.garbage import cyclic_garbage
from tests.servers import CHAT, EMBEDDING, gateway, gateway_settings, running, simulator, wait_for
from vllm_gateway.gateway import create_app

EMBED = b'{"model":"sim-embed","input":"hello"}'
CHAT_STREAM = b'{"model":"sim-chat","stream":true,"max_tokens":5,"messages":[{"role":"user","content":"hi"}]}'


@pytest.fixture(scope="module")
def gw():
    with running(simulator(["sim-chat"], CHAT, max_model_len=20_000)) as chat, \
            running(simulator(["sim-embed"], EMBEDDING)) as embed, \
            gateway({"name": "chat", "url": chat.url}, {"name": "embed", "url": embed.url}) as gw:
        yield gw


def post(path: str, body: bytes, extra: bytes = b"", version: bytes = b"HTTP/1.1") -> bytes:
    return (b"POST " + path.encode() + b" " + version + b"\r\nhost: gw\r\ncontent-type: application/json\r\n"
            + extra + b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body)


class Reader:
    """Reads HTTP/1.1 responses off one socket, one at a time, checking their framing."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock, self.buffer = sock, b""

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise EOFError("connection closed")
        self.buffer += data

    def _until(self, marker: bytes) -> bytes:
        while marker not in self.buffer:
            self._fill()
        line, self.buffer = self.buffer.split(marker, 1)
        return line

    def _exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data, self.buffer = self.buffer[:size], self.buffer[size:]
        return data

    def response(self) -> tuple[int, dict[str, str], bytes]:
        head = self._until(b"\r\n\r\n").decode()
        status_line, *lines = head.split("\r\n")
        if status_line.split()[1] == "100":
            return self.response()
        headers = {}
        for line in lines:
            name, _, value = line.partition(":")
            assert name.lower() not in headers, f"header {name} twice"
            headers[name.lower()] = value.strip()
        if headers.get("transfer-encoding") == "chunked":
            assert "content-length" not in headers
            body = b""
            while True:
                size = int(self._until(b"\r\n"), 16)
                chunk = self._exactly(size + 2)
                assert chunk.endswith(b"\r\n")
                if size == 0:
                    break
                body += chunk[:-2]
        else:
            body = self._exactly(int(headers["content-length"]))
        return int(status_line.split()[1]), headers, body


def connect(gw) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", gw.port), timeout=10)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def test_one_connection_carries_answers_and_streams_in_turn(gw):
    with connect(gw) as sock:
        reader = Reader(sock)
        for _ in range(2):
            sock.sendall(post("/v1/embeddings", EMBED))
            status, headers, body = reader.response()
            assert status == 200 and headers["content-type"] == "application/json"
            assert "date" in headers and "x-request-id" in headers and "connection" not in headers
            assert json.loads(body)["data"][0]["object"] == "embedding"
        sock.sendall(post("/v1/chat/completions", CHAT_STREAM))
        status, headers, body = reader.response()
        assert status == 200 and headers["content-type"].startswith("text/event-stream")
        assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") >= 6
        sock.sendall(post("/v1/embeddings", b'{"model":"nope","input":"x"}'))
        status, _, body = reader.response()  # the gateway's own error, same connection still
        assert status == 404 and json.loads(body)["error"]["code"] == "model_not_found"


def test_pipelined_requests_are_answered_in_order(gw):
    with connect(gw) as sock:
        sock.sendall(post("/v1/chat/completions", CHAT_STREAM) + post("/v1/embeddings", EMBED)
                     + post("/v1/embeddings", b'{"model":"sim-embed","input":["a","b"]}'))
        reader = Reader(sock)
        first, second, third = reader.response(), reader.response(), reader.response()
        assert first[0] == second[0] == third[0] == 200
        assert first[2].endswith(b"data: [DONE]\n\n")
        assert len(json.loads(second[2])["data"]) == 1 and len(json.loads(third[2])["data"]) == 2


def test_connection_close_is_honoured(gw):
    with connect(gw) as sock:
        sock.sendall(post("/v1/embeddings", EMBED, extra=b"connection: close\r\n"))
        reader = Reader(sock)
        status, headers, _ = reader.response()
        assert status == 200 and headers["connection"] == "close"
        with pytest.raises(EOFError):
            reader._fill()


@pytest.mark.parametrize("case", ["http/1.0", "expect-100", "percent-encoded path", "HEAD"])
def test_requests_left_to_uvicorn_are_answered_too(gw, case):
    version, extra, path = b"HTTP/1.1", b"", "/v1/embeddings"
    if case == "http/1.0":
        version = b"HTTP/1.0"
    elif case == "expect-100":
        extra = b"expect: 100-continue\r\n"
    elif case == "percent-encoded path":
        path = "/v1/%65mbeddings"
    with connect(gw) as sock:
        if case == "HEAD":
            sock.sendall(b"HEAD /v1/embeddings HTTP/1.1\r\nhost: gw\r\nconnection: close\r\n\r\n")
            head = sock.recv(65536)
            assert head.startswith(b"HTTP/1.1 405 ")
            return
        if case == "expect-100":
            request = post(path, EMBED, extra=extra)
            head, _, body = request.partition(b"\r\n\r\n")
            sock.sendall(head + b"\r\n\r\n")
            assert sock.recv(65536).startswith(b"HTTP/1.1 100 Continue")
            sock.sendall(body)
        else:
            sock.sendall(post(path, EMBED, extra=extra, version=version))
        status, _, body = Reader(sock).response()
        assert status == 200 and json.loads(body)["data"][0]["object"] == "embedding"


def test_a_client_reading_slowly_gets_a_long_stream_whole(gw):
    body = json.dumps({"model": "sim-chat", "stream": True, "max_tokens": 6000,
                       "messages": [{"role": "user", "content": "hi"}]}).encode()
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connecting: a small window
    sock.settimeout(20)
    sock.connect(("127.0.0.1", gw.port))
    with sock:
        sock.sendall(post("/v1/chat/completions", body))
        time.sleep(1.0)  # the gateway's writes back up meanwhile
        status, _, received = Reader(sock).response()
    assert status == 200 and received.endswith(b"data: [DONE]\n\n")
    events = [e for e in received.split(b"\n\n") if e.startswith(b"data: {")]
    assert len(events) >= 6000  # every token, in order, none torn
    assert all(json.loads(e[6:])["object"] == "chat.completion.chunk" for e in events)


def test_with_the_access_log_on_uvicorns_own_cycle_serves_model_routes_streams_included():
    """The access log is uvicorn's cycle's to write: the lean cycle steps aside, the pipe still works."""
    with running(simulator(["sim-chat"], CHAT, token_delay=0.01)) as chat, running(
            create_app(gateway_settings({"name": "chat", "url": chat.url})), access_log=True) as gw:
        with connect(gw) as sock:
            reader = Reader(sock)
            for _ in range(2):
                sock.sendall(post("/v1/chat/completions", CHAT_STREAM))
                status, headers, body = reader.response()
                assert status == 200 and headers["transfer-encoding"] == "chunked"
                assert body.endswith(b"data: [DONE]\n\n") and body.count(b"data: ") >= 6
        long = json.dumps({"model": "sim-chat", "stream": True, "max_tokens": 400,
                           "messages": [{"role": "user", "content": "hi"}]}).encode()
        with connect(gw) as sock:
            sock.sendall(post("/v1/chat/completions", long))
            assert sock.recv(65536).startswith(b"HTTP/1.1 200 OK")
        # The client left mid-stream: the generation upstream is aborted.
        assert wait_for(lambda: chat.app.state.disconnects == 1 and chat.app.state.running == 0, timeout=10)


# Made for client requests only (background health checks make none of them).
REQUEST_PATH_TYPES = ("app.lean_cycle.", "app.exchange.", "app.downstream.", "uvicorn.protocols.")


def test_finished_requests_leave_no_reference_cycles_behind(gw):
    """A reference cycle per request leaves each finished one's objects (its response cycle,
    exchange, client connection) waiting for a full collection: memory climbs by kilobytes per
    stream and the collections pause every stream in flight."""
    def requests() -> None:
        for _ in range(3):
            with connect(gw) as sock:
                reader = Reader(sock)
                sock.sendall(post("/v1/chat/completions", CHAT_STREAM))
                assert reader.response()[2].endswith(b"data: [DONE]\n\n")
                sock.sendall(post("/v1/embeddings", EMBED))
                assert reader.response()[0] == 200
                sock.sendall(post("/v1/embeddings", b'{"model":"nope","input":"x"}'))
                assert reader.response()[0] == 404
            with connect(gw) as sock:  # left to uvicorn's own cycle
                sock.sendall(post("/v1/chat/completions", CHAT_STREAM, version=b"HTTP/1.0"))
                assert Reader(sock).response()[0] == 200
            with connect(gw) as sock:  # a client leaving mid-stream
                sock.sendall(post("/v1/chat/completions", CHAT_STREAM.replace(b'"max_tokens":5', b'"max_tokens":500')))
                assert sock.recv(1024).startswith(b"HTTP/1.1 200")
        time.sleep(0.3)  # the gateway notices the last client leaving and finishes its request

    left = cyclic_garbage(requests)
    assert Counter({name: n for name, n in left.items() if name.startswith(REQUEST_PATH_TYPES)}) == Counter()
