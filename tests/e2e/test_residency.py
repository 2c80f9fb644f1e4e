"""On-demand residency end to end: launched simulated vLLM servers that sleep and wake.

Each on-demand backend is `python -m vllm_gateway simulate` started by the gateway's supervisor with
`--enable-sleep-mode` and `VLLM_SERVER_DEV_MODE=1` (sleep mode) exactly as vLLM would be; the
simulators keep their own record of when they held GPU memory (`GET /_sim/stats` ->
`awake_intervals`), so the budget rule is checked from the backends' side, not the gateway's.
"""

from __future__ import annotations

import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai
import pytest
from openai import OpenAI

from tests.e2e.test_launch import sim_backend
from tests.servers import gateway_settings, running, sim_stats, wait_for
from vllm_gateway.gateway import create_app
from vllm_gateway.simulator.state import peak_share

BUDGET = 0.9


def on_demand(name: str, share: float, *, wake_delay: float = 0.05, sleep_delay: float = 0.05,
              token_delay: float = 0.0, **launch: Any) -> dict[str, Any]:
    launch.setdefault("min_awake", 0)
    backend = sim_backend(name, f"model-{name}", gpu_memory_utilization=share, residency="on_demand", **launch)
    backend["launch"]["command"] += ["--wake-delay", str(wake_delay), "--sleep-delay", str(sleep_delay),
                                     "--token-delay", str(token_delay)]
    return backend


def resident(name: str, share: float) -> dict[str, Any]:
    return sim_backend(name, f"model-{name}", kind="embedding", gpu_memory_utilization=share)


def status(url: str) -> dict[str, dict[str, Any]]:
    return {b["name"]: b for b in httpx.get(f"{url}/status", timeout=10).json()["backends"]}


def settled(url: str) -> bool:
    """Every backend started (ready, or asleep after its first start) and the loading turn free."""
    return all(b["state"] in ("ready", "asleep") for b in status(url).values())


def client(url: str, timeout: float = 60) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=timeout)


def ask(sdk: OpenAI, model: str, stream: bool) -> str:
    messages = [{"role": "user", "content": "hello there"}]
    if not stream:
        return sdk.chat.completions.create(model=model, messages=messages, max_tokens=8).choices[0].message.content or ""
    text = []
    for chunk in sdk.chat.completions.create(model=model, messages=messages, max_tokens=8, stream=True):
        if chunk.choices and chunk.choices[0].delta.content:
            text.append(chunk.choices[0].delta.content)
    return "".join(text)


def test_three_on_demand_models_hammered_in_random_order_never_exceed_the_budget() -> None:
    shares = {"a": 0.4, "b": 0.4, "c": 0.4}  # any two fit beside the resident, never three
    backends = [resident("embed", 0.1), *(on_demand(n, s, token_delay=0.004, max_wait=60) for n, s in shares.items())]
    settings = gateway_settings(*backends, gpu={"memory_budget": BUDGET, "max_swap_delay": 0.3})
    urls = {b["name"]: b["url"] for b in backends}
    outcomes: dict[str, int] = {"answered": 0, "503": 0}
    problems: list[str] = []
    lock = threading.Lock()

    with running(create_app(settings)) as gw:
        assert wait_for(lambda: settled(gw.url), timeout=60), status(gw.url)
        sdk = client(gw.url)

        def hammer(seed: int) -> None:
            rng = random.Random(seed)
            for _ in range(12):
                model = f"model-{rng.choice('abc')}"
                try:
                    text = ask(sdk, model, stream=rng.random() < 0.6)
                    result = "answered" if text else "empty"
                except openai.APIStatusError as exc:
                    retry = exc.response.headers.get("retry-after")
                    result = "503" if exc.status_code == 503 and retry and exc.body else f"HTTP {exc.status_code}"
                except Exception as exc:  # a timeout is a hung request: the test fails on it
                    result = f"{type(exc).__name__}: {exc}"
                with lock:
                    if result in outcomes:
                        outcomes[result] += 1
                    else:
                        problems.append(f"{model}: {result}")

        started = time.monotonic()
        with ThreadPoolExecutor(10) as pool:
            list(pool.map(hammer, range(10)))
        took = time.monotonic() - started
        records = {name: sim_stats(url) for name, url in urls.items()}
        state = status(gw.url)
        metrics = httpx.get(f"{gw.url}/metrics", timeout=10).text

    assert problems == []
    assert outcomes["answered"] + outcomes["503"] == 120 and outcomes["answered"] >= 100, outcomes
    all_shares = {"embed": 0.1, **shares}
    peak = peak_share([(all_shares[name], r["awake_intervals"]) for name, r in records.items()])
    assert peak <= BUDGET + 1e-9, {name: r["awake_intervals"] for name, r in records.items()}
    # It did swap, many times, each through vLLM's own sleep and wake-up.
    assert all(records[name]["sleeps"] >= 2 and records[name]["wakes"] >= 2 for name in shares), records
    swaps = sum(state[name]["residency"]["swaps"]["wake"] for name in shares)
    assert 'gateway_backend_swaps_total{backend="a",direction="wake"}' in metrics
    assert "gateway_request_wait_seconds_count{reason=\"wake\"}" in metrics
    print(f"\n[residency] 120 requests over 3 on-demand models in {took:.1f} s: {outcomes}, {swaps} wakes, "
          f"peak share held {peak:.2f} of {BUDGET}")


# -- two models that cannot be awake together ----------------------------------------------------

def pair(**launch: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """x starts first and is put to sleep for y, which stays awake."""
    return on_demand("x", 0.6, **launch), on_demand("y", 0.6, **launch)


def started(url: str) -> dict[str, dict[str, Any]]:
    assert wait_for(lambda: settled(url) and status(url)["x"]["state"] == "asleep", timeout=60), status(url)
    return status(url)


def fault(backend: dict[str, Any], **faults: str) -> None:
    assert httpx.post(f"{backend['url']}/_sim/faults", json=faults, timeout=5).status_code == 200


def error_of(exc: openai.APIStatusError) -> dict[str, Any]:
    body = exc.body
    assert isinstance(body, dict), body
    return body.get("error", body)  # the SDK hands over the `error` member


def test_a_failed_wake_answers_its_waiters_503_with_the_reason_others_unaffected_then_it_recovers() -> None:
    x, y = pair()
    with running(create_app(gateway_settings(x, y))) as gw:
        before = started(gw.url)
        fault(x, wake="fail")
        sdk = client(gw.url)
        with pytest.raises(openai.APIStatusError) as info:
            ask(sdk, "model-x", stream=False)
        assert info.value.status_code == 503 and int(info.value.response.headers["retry-after"]) >= 1
        error = error_of(info.value)
        assert error["code"] == "wake_failed" and "out of memory (simulated" in error["message"]
        state = status(gw.url)["x"]
        assert state["state"] == "failed" and "wake failed" in state["residency"]["error"]
        assert state["pid"] is None  # ended, so whatever it held is free
        assert ask(sdk, "model-y", stream=True)  # the other model is served meanwhile
        # Until retry_in_s has passed it is refused at once; then the next request wakes it (a cold start).
        with pytest.raises(openai.APIStatusError) as again:
            ask(sdk, "model-x", stream=False)
        assert error_of(again.value)["code"] == "backend_unavailable" and "failed to wake" in error_of(again.value)["message"]
        time.sleep(state["residency"]["retry_in_s"] + 0.2)
        assert ask(sdk, "model-x", stream=False)
        after = status(gw.url)["x"]
        assert after["state"] == "ready" and after["pid"] != before["x"]["pid"] and after["restarts"] == 0


def test_a_wake_that_hangs_times_out_and_the_backend_is_ended() -> None:
    x, y = pair(wake_timeout=1.0)
    with running(create_app(gateway_settings(x, y))) as gw:
        pid = started(gw.url)["x"]["pid"]
        fault(x, wake="hang")
        began = time.monotonic()
        with pytest.raises(openai.APIStatusError) as info:
            ask(client(gw.url), "model-x", stream=True)
        assert 0.9 < time.monotonic() - began < 10
        assert info.value.status_code == 503
        assert "not awake within 1 s (launch.wake_timeout)" in error_of(info.value)["message"]
        assert status(gw.url)["x"]["state"] == "failed"
        assert wait_for(lambda: not _alive(pid))


def test_a_sleep_that_fails_stops_the_process_instead_and_both_models_still_answer() -> None:
    x, y = pair()
    with running(create_app(gateway_settings(x, y))) as gw:
        y_pid = started(gw.url)["y"]["pid"]
        fault(y, sleep="fail")
        sdk = client(gw.url)
        assert ask(sdk, "model-x", stream=False)  # y had to make room: its sleep failed, so it was stopped
        y_state = status(gw.url)["y"]
        assert y_state["state"] == "asleep" and "sleep failed" in y_state["residency"]["error"]
        assert y_state["pid"] is None and not _alive(y_pid)
        assert ask(sdk, "model-y", stream=True)  # a cold start
        assert status(gw.url)["y"]["state"] == "ready"


def test_a_backend_that_dies_asleep_is_not_restarted_until_it_is_needed() -> None:
    x, y = pair()
    with running(create_app(gateway_settings(x, y))) as gw:
        pid = started(gw.url)["x"]["pid"]
        import os
        import signal
        os.kill(pid, signal.SIGKILL)
        assert wait_for(lambda: status(gw.url)["x"]["pid"] is None, timeout=10)
        time.sleep(0.5)  # well past restart_backoff_initial (0.2 s): no restart happened
        state = status(gw.url)["x"]
        assert state["state"] == "asleep" and state["restarts"] == 0 and state["pid"] is None
        assert "ended while asleep" in state["residency"]["error"]
        assert ask(client(gw.url), "model-x", stream=False)
        assert status(gw.url)["x"]["state"] == "ready"


def test_a_drain_that_runs_out_ends_the_stream_with_an_sse_error_event() -> None:
    x, y = pair(drain_timeout=0.5, token_delay=0.2)
    settings = gateway_settings(x, y, gpu={"memory_budget": BUDGET, "max_swap_delay": 0.0})
    with running(create_app(settings)) as gw:
        started(gw.url)
        body = {"model": "model-y", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 200, "stream": True}
        events: list[str] = []

        def stream_y() -> None:
            with httpx.stream("POST", f"{gw.url}/v1/chat/completions", json=body, timeout=30) as response:
                events.extend(line for line in response.iter_lines() if line)

        reader = threading.Thread(target=stream_y)
        reader.start()
        assert wait_for(lambda: status(gw.url)["y"]["residency"]["in_flight"] == 1)
        assert ask(client(gw.url), "model-x", stream=False)  # y drains 0.5 s, is cut off, sleeps; x wakes
        reader.join(10)
        assert events[-1] == "data: [DONE]"
        error = httpx.Response(200, content=events[-2].removeprefix("data: ")).json()["error"]
        assert error["code"] == "backend_sleeping" and "launch.drain_timeout (0.5 s)" in error["message"]
        assert len(events) > 3  # it had streamed tokens before


def test_a_request_waits_no_longer_than_max_wait() -> None:
    x, y = pair(max_wait=0.5, wake_delay=3.0)
    with running(create_app(gateway_settings(x, y))) as gw:
        started(gw.url)
        with pytest.raises(openai.APIStatusError) as info:
            ask(client(gw.url), "model-x", stream=False)
        assert info.value.status_code == 503 and info.value.response.headers["retry-after"]
        error = error_of(info.value)
        assert error["code"] == "backend_asleep" and "(launch.max_wait)" in error["message"]
        assert wait_for(lambda: status(gw.url)["x"]["state"] == "ready", timeout=10)  # the wake went on


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as stat:
            return stat.read().rsplit(b")", 1)[1].split()[0] not in (b"Z", b"X")
    except OSError:
        return False


# -- what an operator sees and can do --------------------------------------------------------------

ADMIN = "sk-admin"


def test_sleeping_models_stay_listed_ready_and_up_and_vllms_sleep_state_passes_through() -> None:
    x, y = pair()
    with running(create_app(gateway_settings(x, y))) as gw:
        started(gw.url)
        assert {m.id for m in client(gw.url).models.list().data} == {"model-x", "model-y"}
        assert httpx.get(f"{gw.url}/ready", timeout=5).status_code == 200
        page = httpx.get(f"{gw.url}/metrics", timeout=10).text
        assert 'gateway_backend_up{backend="x"} 1.0' in page and 'gateway_backend_awake{backend="x"} 0.0' in page
        assert 'gateway_backend_awake{backend="y"} 1.0' in page
        sleep_state = [line for line in page.splitlines() if line.startswith("vllm:engine_sleep_state{")]
        assert any('backend="x"' in line and 'sleep_state="weights_offloaded"' in line and line.endswith(" 1.0")
                   for line in sleep_state), sleep_state
        assert any('backend="y"' in line and 'sleep_state="awake"' in line and line.endswith(" 1.0") for line in sleep_state)
        info = status(gw.url)
        assert info["x"]["residency"]["mode"] == "on_demand" and info["x"]["residency"]["awake"] is False
        overall = httpx.get(f"{gw.url}/status", timeout=5).json()["residency"]
        assert overall == {"turn": None, "budget": 0.9, "in_use": {"0": 0.6}}  # y's share, nobody swapping
        assert info["x"]["residency"]["swaps"] == {"sleep": 1, "wake": 0}


def test_the_sleep_routes_of_the_backends_are_not_reachable_through_the_gateway() -> None:
    x, y = pair()
    with running(create_app(gateway_settings(x, y))) as gw:
        started(gw.url)
        for method, path in [("POST", "/sleep?level=1"), ("POST", "/wake_up"), ("GET", "/is_sleeping"),
                             ("POST", "/collective_rpc"), ("POST", "/reset_prefix_cache"), ("POST", "/v1/sleep"),
                             ("POST", "/release_kv_cache_memory")]:
            response = httpx.request(method, f"{gw.url}{path}", json={"model": "model-y", "method": "x"}, timeout=5)
            assert response.status_code == 404 and response.json()["error"]["code"] == "not_found", path
        seen = sim_stats(y["url"])["paths"]
        assert not {"/sleep", "/wake_up", "/collective_rpc", "/reset_prefix_cache", "/is_sleeping"} & set(seen), seen
        assert status(gw.url)["y"]["state"] == "ready"


def test_the_admin_routes_sleep_and_wake_a_backend_behind_the_admin_key() -> None:
    x, y = pair()
    embed = resident("embed", 0.1)
    settings = gateway_settings(x, y, embed, admin_api_key=ADMIN, api_keys=["sk-client"], gpu={"memory_budget": 0.9})
    with running(create_app(settings)) as gw:
        assert wait_for(lambda: all(b["state"] in ("ready", "asleep") for b in _status(gw.url, "sk-client").values()), 60)
        admin = {"Authorization": f"Bearer {ADMIN}"}
        for headers in ({}, {"Authorization": "Bearer sk-client"}, {"Authorization": "Bearer wrong"}):
            refused = httpx.post(f"{gw.url}/admin/backends/y/sleep", headers=headers, timeout=5)
            assert refused.status_code == 401 and refused.json()["error"]["type"] == "authentication_error"
        asleep = httpx.post(f"{gw.url}/admin/backends/y/sleep", headers=admin, timeout=30)
        assert asleep.status_code == 200 and asleep.json()["state"] == "asleep", asleep.text
        woken = httpx.post(f"{gw.url}/admin/backends/x/wake", headers=admin, timeout=30)
        assert woken.status_code == 200 and woken.json()["state"] == "ready" and woken.json()["took_s"] > 0
        assert woken.json()["residency"]["swaps"]["wake"] == 1
        again = httpx.post(f"{gw.url}/admin/backends/x/wake", headers=admin, timeout=30)
        assert again.json()["took_s"] == 0  # already awake
        missing = httpx.post(f"{gw.url}/admin/backends/nope/wake", headers=admin, timeout=5)
        assert missing.status_code == 404 and missing.json()["error"]["code"] == "backend_not_found"
        assert "x, y" in missing.json()["error"]["message"]
        always = httpx.post(f"{gw.url}/admin/backends/embed/sleep", headers=admin, timeout=5)
        assert always.status_code == 400 and always.json()["error"]["code"] == "not_on_demand"
        assert httpx.get(f"{gw.url}/admin/backends/x/wake", headers=admin, timeout=5).status_code == 405


def test_client_keys_never_open_the_admin_routes() -> None:
    """With only `api_keys`, the admin routes say which key they need; a client key does not open them."""
    x, y = pair()
    with running(create_app(gateway_settings(x, y, api_keys=["client-key"]))) as gw:
        for headers in ({}, {"Authorization": "Bearer client-key"}):
            response = httpx.post(f"{gw.url}/admin/backends/x/wake", headers=headers, timeout=5)
            assert response.status_code == 401 and "admin_api_key" in response.json()["error"]["message"]


def _status(url: str, key: str) -> dict[str, dict[str, Any]]:
    backends = httpx.get(f"{url}/status", headers={"Authorization": f"Bearer {key}"}, timeout=10).json()["backends"]
    return {b["name"]: b for b in backends}


# -- restart mode ------------------------------------------------------------------------------------

class ProcessWatch:
    """Polls /proc for live processes whose command line holds one of `markers`; the most at once."""

    def __init__(self, markers: list[str]) -> None:
        self.markers = [m.encode() for m in markers]
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def alive(self) -> int:
        import os
        found = 0
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read()
                with open(f"/proc/{entry}/stat", "rb") as f:
                    state = f.read().rsplit(b")", 1)[1].split()[0]
            except OSError:
                continue
            if state not in (b"Z", b"X") and any(marker in cmdline.split(b"\0") for marker in self.markers):
                found += 1
        return found

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.alive())
            time.sleep(0.005)


def test_restart_mode_starts_a_model_only_when_needed_and_never_two_at_once() -> None:
    x = on_demand("rx", 0.6, swap="restart")
    y = on_demand("ry", 0.6, swap="restart")
    with ProcessWatch(["model-rx", "model-ry"]) as watch, running(create_app(gateway_settings(x, y))) as gw:
        assert wait_for(lambda: all(b["state"] == "asleep" for b in status(gw.url).values()), timeout=10)
        time.sleep(0.3)
        assert watch.alive() == 0  # not started until first needed
        sdk = client(gw.url)
        for model in ["model-rx", "model-ry", "model-rx", "model-ry"]:
            assert ask(sdk, model, stream=model.endswith("y"))
        state = status(gw.url)
        assert state["rx"]["state"] == "asleep" and state["ry"]["state"] == "ready"
        assert state["rx"]["residency"]["swaps"] == {"sleep": 2, "wake": 2} and state["rx"]["restarts"] == 0
        assert state["rx"]["residency"]["sleep_level"] is None
    assert watch.peak == 1


# -- realtime sessions -------------------------------------------------------------------------------

def test_a_realtime_session_wakes_its_backend_and_holds_it_awake() -> None:
    import json

    from websockets.sync.client import connect

    x, y = pair()
    with running(create_app(gateway_settings(x, y))) as gw:
        started(gw.url)
        with connect(gw.url.replace("http://", "ws://") + "/v1/realtime", open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
            ws.send(json.dumps({"type": "session.update", "model": "model-x"}))
            ws.send(json.dumps({"type": "input_audio_buffer.append", "audio": "AAAA"}))
            ws.send(json.dumps({"type": "input_audio_buffer.commit"}))
            assert json.loads(ws.recv(timeout=15))["type"] == "transcription.delta"
            assert status(gw.url)["x"]["residency"]["in_flight"] == 1
        assert wait_for(lambda: status(gw.url)["x"]["residency"]["in_flight"] == 0)
        assert status(gw.url)["x"]["residency"]["swaps"]["wake"] == 1


def test_an_idle_backend_sleeps_by_itself_and_a_wake_is_warmed_up_before_requests_go() -> None:
    x, y = pair(idle_sleep=0.5, warmup=True)
    with running(create_app(gateway_settings(x, y))) as gw:
        started(gw.url)
        assert wait_for(lambda: status(gw.url)["y"]["state"] == "asleep", timeout=10)  # nobody asked for y
        assert status(gw.url)["y"]["residency"]["swaps"]["sleep"] == 1
        before = sim_stats(x["url"])["received"]
        assert ask(client(gw.url), "model-x", stream=False)
        bodies = [r["body"] for r in sim_stats(x["url"])["requests"]][before:]
        assert bodies[0]["max_tokens"] == 1 and bodies[0]["messages"][0]["content"] == "Hi"  # the warm-up, first
        assert bodies[1]["max_tokens"] == 8
        assert wait_for(lambda: status(gw.url)["x"]["state"] == "asleep", timeout=10)  # idle again: asleep again


def test_a_realtime_session_that_outlasts_the_drain_is_ended_with_try_again_later() -> None:
    import json

    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    x, y = pair(drain_timeout=0.3)
    with running(create_app(gateway_settings(x, y, gpu={"memory_budget": BUDGET, "max_swap_delay": 0.0}))) as gw:
        started(gw.url)
        with connect(gw.url.replace("http://", "ws://") + "/v1/realtime", open_timeout=5) as ws:
            assert json.loads(ws.recv(timeout=5))["type"] == "session.created"
            ws.send(json.dumps({"type": "session.update", "model": "model-y"}))
            assert wait_for(lambda: status(gw.url)["y"]["residency"]["in_flight"] == 1)
            assert ask(client(gw.url), "model-x", stream=False)  # y's session is ended after 0.3 s, then x wakes
            event = json.loads(ws.recv(timeout=5))
            assert event["type"] == "error" and event["error"]["code"] == "backend_sleeping"
            with pytest.raises(ConnectionClosed) as closed:
                ws.recv(timeout=5)
            assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
