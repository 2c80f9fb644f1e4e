"""The gateway in front of real vLLM servers it launched itself (vLLM's CPU build, tiny models).

The tests share one gateway (see conftest.py) and run in file order: traffic first, then a backend
killed with SIGKILL, then the gateway's own shutdown. The models have random weights, so the
tests check protocol, routing, process handling and metrics, never the text.
"""

from __future__ import annotations

import http.client
import math
import os
import re
import signal
import time
from datetime import datetime
from pathlib import Path

import httpx
import openai
import pytest
from openai import OpenAI

from tests.real_vllm.conftest import LiveGateway
from tests.servers import wait_for

pytestmark = [pytest.mark.vllm, pytest.mark.timeout(900)]

CHAT, EMBED = "tiny-chat", "tiny-embed"
RESET = {"ignore_eos": True}  # random weights may pick EOS at once; the tests want exact lengths


def sdk(live: LiveGateway, retries: int = 0) -> OpenAI:
    return OpenAI(base_url=f"{live.url}/v1", api_key="unused", max_retries=retries, timeout=60)


def vllm_metric(url: str, name: str, **labels: str) -> float:
    """One sample from a vLLM server's own /metrics page."""
    text = httpx.get(f"{url}/metrics", timeout=10).text
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        if all(f'{k}="{v}"' in line for k, v in labels.items()):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} {labels} not on {url}/metrics")


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != b"Z":
                members.append(int(entry.name))
    return members


def descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_bytes().rsplit(b")", 1)[1].split()
            except OSError:
                continue
            children.setdefault(int(fields[1]), []).append(int(entry.name))
    found, todo = set(), [root]
    while todo:
        for child in children.get(todo.pop(), []):
            found.add(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    try:
        return (Path("/proc") / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()[0] != b"Z"
    except OSError:
        return False


def started_at(pid: int) -> float:
    """Wall-clock start of a process, from /proc (10 ms resolution)."""
    ticks = int((Path("/proc") / str(pid) / "stat").read_bytes().rsplit(b")", 1)[1].split()[19])
    uptime = float(Path("/proc/uptime").read_text().split()[0])  # finer than /proc/stat's whole-second btime
    return time.time() - uptime + ticks / os.sysconf("SC_CLK_TCK")


def logged_at(log: str, pattern: str) -> tuple[int, float]:
    """Line number and time of the first gateway log line matching `pattern`."""
    for number, line in enumerate(log.splitlines()):
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            return number, stamp.timestamp()
    raise AssertionError(f"no log line matches {pattern!r}")


# -- start-up ---------------------------------------------------------------------------------------

def test_second_backend_started_only_after_the_first_answered_health(live: LiveGateway) -> None:
    log = live.log_text()
    chat_ready_line, chat_ready = logged_at(log, r"backend 'chat' is ready")
    embed_launch_line, _ = logged_at(log, r"launching backend 'embed'")
    first_embed_output = next(i for i, line in enumerate(log.splitlines()) if line.startswith("[embed] "))
    assert chat_ready_line < embed_launch_line < first_embed_output
    # The operating system's own clock agrees: embed's process began after chat became ready.
    embed_pid = live.status()["embed"]["pid"]
    assert started_at(embed_pid) >= chat_ready - 0.02
    assert "[chat] " in log and "warmed up with /v1/chat/completions" in log and "warmed up with /v1/embeddings" in log
    # The per-backend log file has vLLM's own account of the flags the gateway added.
    args = next(line for line in (live.workdir / "chat.log").read_text().splitlines() if "non-default args" in line)
    port = live.backend_urls["chat"].rsplit(":", 1)[1]
    assert f"'port': {port}" in args and "'max_model_len': 4096" in args and "'served_model_name': ['tiny-chat']" in args


def test_status_shows_both_launched_backends_ready(live: LiveGateway) -> None:
    states = live.status()
    for name in ("chat", "embed"):
        info = states[name]
        assert info["state"] == "ready" and info["launched"] is True and info["restarts"] == 0
        assert alive(info["pid"]) and info["uptime_s"] > 0
    assert httpx.get(f"{live.url}/ready", timeout=10).status_code == 200


def test_models_lists_both_backends(live: LiveGateway) -> None:
    models = {m.id: m for m in sdk(live).models.list().data}
    assert set(models) == {CHAT, EMBED}
    assert models[CHAT].model_extra["max_model_len"] == 4096 and models[EMBED].model_extra["max_model_len"] == 512


# -- traffic ------------------------------------------------------------------------------------------

def test_chat_completion(live: LiveGateway) -> None:
    reply = sdk(live).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Hello there"}], max_tokens=5, extra_body=RESET)
    assert reply.model == CHAT and reply.object == "chat.completion"
    assert isinstance(reply.choices[0].message.content, str)
    assert reply.usage.completion_tokens == 5 and reply.usage.prompt_tokens > 0


def test_chat_streaming_with_usage(live: LiveGateway) -> None:
    chunks = list(sdk(live).chat.completions.create(
        model=CHAT, messages=[{"role": "user", "content": "Count"}], max_tokens=8, stream=True,
        stream_options={"include_usage": True}, extra_body=RESET))
    assert all(c.object == "chat.completion.chunk" and c.model == CHAT for c in chunks)
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 8
    assert chunks[-2].choices[0].finish_reason == "length"
    text_chunks = [c for c in chunks[:-1] if c.choices and c.choices[0].delta.content]
    assert len(text_chunks) >= 2


def test_completion(live: LiveGateway) -> None:
    reply = sdk(live).completions.create(model=CHAT, prompt="Once upon a time", max_tokens=6, extra_body=RESET)
    assert reply.object == "text_completion" and isinstance(reply.choices[0].text, str)
    assert reply.usage.completion_tokens == 6


def test_a_stored_response_is_retrieved_through_the_gateway(live: LiveGateway) -> None:
    client = sdk(live)
    made = client.responses.create(model=CHAT, input="Hello there", max_output_tokens=4, extra_body=RESET)
    assert made.id.startswith("resp_") and made.model == CHAT
    again = client.responses.retrieve(made.id)
    assert again.id == made.id and again.status == made.status


def test_embeddings(live: LiveGateway) -> None:
    reply = sdk(live).embeddings.create(model=EMBED, input=["first text", "a second, longer text"])
    assert [d.index for d in reply.data] == [0, 1]
    vectors = [d.embedding for d in reply.data]
    assert len(vectors[0]) == len(vectors[1]) == 128
    assert all(math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-3) for v in vectors)
    assert vectors[0] != vectors[1]


def test_launched_vllm_keeps_idle_connections_past_its_default_5_s(live: LiveGateway) -> None:
    """The gateway starts vLLM with VLLM_HTTP_TIMEOUT_KEEP_ALIVE=60 (and keeps its own idle
    connections 59 s): a connection idle for longer than vLLM's default 5 s is still open."""
    pid = live.status()["embed"]["pid"]
    assert b"VLLM_HTTP_TIMEOUT_KEEP_ALIVE=60" in (Path("/proc") / str(pid) / "environ").read_bytes().split(b"\0")
    url = httpx.URL(live.backend_urls["embed"])
    conn = http.client.HTTPConnection(url.host, url.port, timeout=10)
    try:
        conn.request("GET", "/health")
        first = conn.getresponse()
        first.read()  # the whole response, so the connection is free for the next request
        assert first.status == 200
        local = conn.sock.getsockname()
        time.sleep(6.5)
        conn.request("GET", "/health")  # on the same socket: vLLM has not closed it
        assert conn.getresponse().status == 200
        assert conn.sock.getsockname() == local
    finally:
        conn.close()


def test_unknown_model_is_not_found(live: LiveGateway) -> None:
    with pytest.raises(openai.NotFoundError) as caught:
        sdk(live).chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "x"}])
    assert caught.value.code == "model_not_found"
    assert CHAT in caught.value.message and EMBED in caught.value.message


def test_client_disconnect_mid_stream_aborts_the_generation(live: LiveGateway) -> None:
    """vLLM 0.32 does not count a client abort in request_success_total; what it leaves is a
    generation that stops far short of max_tokens and is never recorded as finished ("length")."""
    backend = live.backend_urls["chat"]
    labels = {"model_name": CHAT}
    finished_before = vllm_metric(backend, "vllm:request_success_total", finished_reason="length", **labels)
    tokens_before = vllm_metric(backend, "vllm:generation_tokens_total", **labels)
    wanted = 4000  # ~10 s of generation here: far longer than reading three chunks
    with sdk(live).chat.completions.create(
            model=CHAT, messages=[{"role": "user", "content": "Tell a long story"}], max_tokens=wanted,
            stream=True, extra_body=RESET) as stream:
        for number, _ in enumerate(stream):
            if number == 3:
                break  # leaving the block closes the connection to the gateway
    assert wait_for(lambda: vllm_metric(backend, "vllm:num_requests_running", **labels) == 0, timeout=10)
    produced = vllm_metric(backend, "vllm:generation_tokens_total", **labels) - tokens_before
    assert produced < wanted / 2, f"vLLM generated {produced:.0f} of {wanted} tokens: it was not aborted"
    assert vllm_metric(backend, "vllm:request_success_total", finished_reason="length", **labels) == finished_before


# -- failure and shutdown -------------------------------------------------------------------------------

def test_a_backend_killed_with_sigkill_is_restarted_and_serves_again(live: LiveGateway) -> None:
    """The embedding server: it reloads faster than the chat one, which keeps the set short."""
    old = live.status()["embed"]["pid"]
    group_before = group_members(old)
    assert len(group_before) >= 2, "vLLM's API server runs its engine in child processes"
    os.kill(old, signal.SIGKILL)

    assert wait_for(lambda: live.status()["embed"]["state"] != "ready", timeout=15)
    with pytest.raises(openai.InternalServerError) as caught:  # 503 while it is down
        sdk(live).embeddings.create(model=EMBED, input="x")
    assert caught.value.status_code == 503 and caught.value.response.headers.get("retry-after")
    # The engine children of the killed server go too (same process group), not only its leader.
    assert wait_for(lambda: group_members(old) == [], timeout=30), group_members(old)
    chat = live.status()["chat"]
    assert chat["state"] == "ready" and chat["restarts"] == 0  # the other backend is untouched...
    assert sdk(live).chat.completions.create(  # ...and keeps serving
        model=CHAT, messages=[{"role": "user", "content": "meanwhile"}], max_tokens=2, extra_body=RESET).usage.completion_tokens == 2

    assert wait_for(lambda: live.status()["embed"]["state"] == "ready", timeout=300), live.log_tail()
    info = live.status()["embed"]
    assert info["restarts"] == 1 and info["pid"] != old and info["last_exit_code"] == -9
    assert "signal SIGKILL" in live.log_text()
    assert 'gateway_backend_restarts_total{backend="embed"} 1.0' in httpx.get(f"{live.url}/metrics", timeout=10).text
    assert len(sdk(live).embeddings.create(model=EMBED, input="again").data[0].embedding) == 128


def test_sigterm_stops_the_gateway_and_leaves_no_vllm_process(live: LiveGateway) -> None:
    backend_pids = [b["pid"] for b in live.status().values()]
    everything = descendants(live.proc.pid)
    assert set(backend_pids) <= everything and len(everything) >= 4  # two servers and their engines
    started = time.monotonic()
    live.proc.send_signal(signal.SIGTERM)
    live.proc.wait(90)
    took = time.monotonic() - started
    left = [pid for pid in everything if alive(pid)]
    assert left == [], f"still running after shutdown: {left}\n{live.log_tail()}"
    assert all(group_members(pid) == [] for pid in backend_pids)
    assert "Application shutdown complete" in live.log_text()
    print(f"\n[real-vllm] gateway and {len(everything)} backend processes stopped in {took:.1f} s "
          f"(start-up took {live.started_s:.1f} s)")
