"""The operator page in a real browser: Playwright driving Debian's chromium (installed by
scripts/test-tools.sh; Playwright's own browser download is not used) against gateways in front
of simulated backends, external (tests/servers.py) and launched (`sim_backend`).

Every page opened here records its console errors and every URL it asked for: a test fails on
any console error and on any request to another origin.
"""

from __future__ import annotations

import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from openai import OpenAI

from tests.e2e.test_launch import ROOT, sim_backend, status
from tests.servers import CHAT, EMBEDDING, Running, gateway, gateway_settings, running, simulator, wait_for
from vllm_gateway.gateway import create_app
from vllm_gateway.gpu.fake import FakeGpu, FakeGpus
from vllm_gateway.simulator.adapters import write_adapter

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ADMIN_KEY = "admin-key-for-the-page-tests"
SCREENSHOT = Path(ROOT) / "docs" / "operator-page.png"
GB = 10**9
QWEN3_8B = str(Path(ROOT) / "tests" / "fixtures" / "models" / "qwen3-8b")
EMBED_06B = str(Path(ROOT) / "tests" / "fixtures" / "models" / "qwen3-embedding-0.6b")
QWEN3_06B = str(Path(ROOT) / "tests" / "fixtures" / "models" / "qwen3-0.6b")


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not Path(CHROMIUM).exists():
        message = "chromium is not installed: run scripts/test-tools.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        # As root (CI, containers) chromium's sandbox cannot start.
        launched = playwright.chromium.launch(executable_path=CHROMIUM,
                                              args=["--no-sandbox"] if os.geteuid() == 0 else [])
        yield launched
        launched.close()


class Page:
    """A browser tab on one gateway, recording console errors and the URLs it requested."""

    def __init__(self, browser: Any, gw: Running, **options: Any) -> None:
        self.gw = gw
        self.context = browser.new_context(viewport={"width": 1400, "height": 1000}, **options)
        self.tab = self.context.new_page()
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.closed = False
        self.tab.on("console", lambda m: self.errors.append(m.text) if m.type == "error" else None)
        self.tab.on("pageerror", lambda e: self.errors.append(f"page error: {e}"))
        self.tab.on("request", lambda r: self.requests.append(r.url))
        self.tab.on("dialog", lambda d: d.accept())  # the actions' confirmations

    def open(self, key: str | None = None) -> Any:
        response = self.tab.goto(f"{self.gw.url}/ui")
        if key is not None:
            assert response.status == 401 and self.tab.locator("form[action='/ui/login']").is_visible()
            self.errors.clear()  # the browser reports that refusal (401) as a console error: it is the one expected
            self.tab.fill("#key", key)
            self.tab.click("button[type=submit]")
        self.tab.wait_for_selector("#live.live", timeout=10_000)
        return self.tab

    def state_of(self, backend: str) -> str:
        return self.tab.locator(f"tr.backend[data-backend='{backend}'] td.state").inner_text()

    def wait_state(self, backend: str, wanted: str, timeout: float = 20) -> bool:
        return wait_for(lambda: self.state_of(backend) == wanted, timeout=timeout, interval=0.1)

    def details(self, backend: str) -> Any:
        self.tab.click(f"tr.backend[data-backend='{backend}'] td.mono")
        return self.tab.locator("tr.details").first

    def close(self) -> None:
        """Close the tab first (inside the gateway's `with`: an open event stream would hold the
        server's exit), then check what it saw."""
        if self.closed:
            return
        self.closed = True
        self.context.close()
        assert self.errors == [], self.errors
        elsewhere = [u for u in self.requests if not u.startswith(self.gw.url + "/")]
        assert elsewhere == [], elsewhere


@pytest.fixture
def open_page(browser: Any) -> Iterator[Any]:
    pages: list[Page] = []

    def make(gw: Running, **options: Any) -> Page:
        page = Page(browser, gw, **options)
        pages.append(page)
        return page

    yield make
    for page in pages:  # a test that failed before closing its pages
        if not page.closed:
            page.closed = True
            page.context.close()


def test_the_page_loads_clean_after_signing_in_and_shows_both_backends(open_page: Any) -> None:
    with running(simulator(["sim-chat"], CHAT)) as chat, running(simulator(["sim-embed"], EMBEDDING)) as embed, \
            gateway({"name": "chat", "url": chat.url, "aliases": ["gpt-4o-mini"]}, {"name": "embed", "url": embed.url},
                     api_keys=["client-key"], admin_api_key=ADMIN_KEY) as gw:
        sdk = OpenAI(base_url=f"{gw.url}/v1", api_key="client-key", max_retries=0)
        sdk.chat.completions.create(model="gpt-4o-mini", messages=[{"role": "user", "content": "hi"}],
                                    stream=False, max_tokens=4)
        sdk.embeddings.create(model="sim-embed", input="hello")
        page = open_page(gw)
        tab = page.open(ADMIN_KEY)
        assert page.wait_state("chat", "ready") and page.wait_state("embed", "ready")
        assert "gpt-4o-mini" in tab.locator("tr.backend[data-backend='chat']").inner_text()
        assert tab.locator("#role").inner_text() == "admin"
        # Both requests are in Activity, with the usage the answers carried.
        assert wait_for(lambda: tab.locator("#activity-rows tr").count() >= 2, timeout=5)
        chat_row = tab.locator("#activity-rows tr", has_text="/v1/chat/completions").first.inner_text()
        assert "gpt-4o-mini" in chat_row and "200" in chat_row
        # No key in the page, its URLs or a script-readable cookie; the session cookie is HttpOnly.
        assert ADMIN_KEY not in tab.content() and not any(ADMIN_KEY in u for u in page.requests)
        assert tab.evaluate("document.cookie") == ""
        (cookie,) = page.context.cookies()
        assert cookie["httpOnly"] and cookie["sameSite"] == "Strict"
        # By keyboard: a row takes focus and Enter opens its details.
        tab.focus("tr.backend[data-backend='embed']")
        tab.keyboard.press("Enter")
        assert tab.locator("tr.details").count() == 1 and "addresses" in tab.locator("tr.details").inner_text()
        # Search narrows the table.
        tab.fill("#backend-search", "embed")
        assert wait_for(lambda: tab.locator("tr.backend").count() == 1, timeout=3)
        # No NVML here: the page says so rather than hiding the section.
        assert "No NVML" in tab.locator("#gpus").inner_text()
        page.close()


def test_dark_and_light_follow_the_system(open_page: Any) -> None:
    with running(simulator(["sim-chat"], CHAT)) as chat, gateway({"name": "chat", "url": chat.url}) as gw:
        colors = []
        for scheme in ("light", "dark"):
            page = open_page(gw, color_scheme=scheme)
            colors.append(page.open().evaluate("getComputedStyle(document.body).backgroundColor"))
            page.close()
        assert colors[0] != colors[1]


def test_without_the_key_the_page_and_its_data_are_refused() -> None:
    with running(simulator(["sim-chat"], CHAT)) as chat, \
            gateway({"name": "chat", "url": chat.url}, api_keys=["client-key"], metrics_api_key="metrics-key",
                    admin_api_key=ADMIN_KEY) as gw:
        page = httpx.get(f"{gw.url}/ui")
        assert page.status_code == 401 and 'action="/ui/login"' in page.text and "sim-chat" not in page.text
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in page.headers["content-security-policy"] and page.headers["x-frame-options"] == "DENY"
        for path in ("/ui/events", "/ui/snapshot", "/ui/session", "/ui/static/ui.js", "/ui/static/index.html"):
            refused = httpx.get(f"{gw.url}{path}")
            assert refused.status_code == 401, path
            assert refused.json()["error"]["type"] == "authentication_error", path
        assert httpx.get(f"{gw.url}/ui/static/ui.css").status_code == 200  # the sign-in form's style, no data
        assert httpx.get(f"{gw.url}/ui/").headers["location"] == "/ui"
        for path in ("/ui/playground", "/admin/backends/chat/restart"):
            assert httpx.post(f"{gw.url}{path}", json={}).status_code == 401, path
        # The client key opens the models, not the operator page.
        assert httpx.get(f"{gw.url}/ui/snapshot", headers={"authorization": "Bearer client-key"}).status_code == 401
        # The metrics key watches but does not act; the admin key acts.
        viewer = {"authorization": "Bearer metrics-key"}
        assert httpx.get(f"{gw.url}/ui/snapshot", headers=viewer).json()["role"] == "view"
        forbidden = httpx.post(f"{gw.url}/admin/backends/chat/restart", headers=viewer)
        assert forbidden.status_code == 403 and "admin key" in forbidden.json()["error"]["message"]
        admin = {"authorization": f"Bearer {ADMIN_KEY}"}
        external = httpx.post(f"{gw.url}/admin/backends/chat/restart", headers=admin)
        assert external.status_code == 409 and external.json()["error"]["code"] == "not_launched"
        missing = httpx.post(f"{gw.url}/admin/backends/nope/restart", headers=admin)
        assert missing.status_code == 404 and "chat" in missing.json()["error"]["message"]
        # /status, the data model, takes an operator key as well as a client key.
        assert httpx.get(f"{gw.url}/status", headers=admin).json()["schema_version"] == 1
        assert httpx.get(f"{gw.url}/status").status_code == 401
        # Signing in: a wrong key is refused, a form posted from another site too.
        same = {"sec-fetch-site": "same-origin"}
        wrong = httpx.post(f"{gw.url}/ui/login", data={"key": "nope"}, headers=same)
        assert wrong.status_code == 401 and "not the admin or the metrics key" in wrong.text
        assert httpx.post(f"{gw.url}/ui/login", data={"key": ADMIN_KEY},
                          headers={"sec-fetch-site": "cross-site"}).status_code == 403
        signed = httpx.post(f"{gw.url}/ui/login", data={"key": ADMIN_KEY}, headers=same)
        assert signed.status_code == 303 and "HttpOnly" in signed.headers["set-cookie"]
        cookie = {"cookie": signed.headers["set-cookie"].split(";")[0]}
        assert httpx.get(f"{gw.url}/ui/snapshot", headers=cookie).json()["role"] == "admin"
        # With the cookie, a change must come from the page itself.
        assert httpx.post(f"{gw.url}/admin/backends/chat/restart",
                          headers={**cookie, "sec-fetch-site": "cross-site"}).status_code == 403
        assert httpx.post(f"{gw.url}/admin/backends/chat/restart", headers={**cookie, **same}).status_code == 409
        out = httpx.post(f"{gw.url}/ui/logout", headers={**cookie, **same})
        assert out.status_code == 303 and "Max-Age=0" in out.headers["set-cookie"]
        assert httpx.get(f"{gw.url}/ui/snapshot", headers=cookie).status_code == 401


def test_a_killed_launched_backend_shows_restarting_then_ready(open_page: Any) -> None:
    chat = sim_backend("chat", "sim-chat", restart_backoff_initial=1.0)
    with running(create_app(gateway_settings(chat))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        page = open_page(gw)
        page.open()
        assert page.wait_state("chat", "ready")
        os.kill(status(gw.url)["chat"]["pid"], signal.SIGKILL)
        assert page.wait_state("chat", "restarting", timeout=10)
        assert "SIGKILL" in page.tab.locator("tr.backend[data-backend='chat'] td.err").inner_text()
        assert page.wait_state("chat", "ready", timeout=20)
        assert page.tab.locator("tr.backend[data-backend='chat'] td").nth(6).inner_text() == "1"  # one restart counted
        # The process's own output reached the log tail, with the gateway's own lines.
        assert wait_for(lambda: "simulated vLLM server" in page.tab.locator("#log-lines").inner_text(), timeout=5)
        page.close()


def test_restart_from_the_page_ends_the_process_and_starts_it_again(open_page: Any) -> None:
    chat = sim_backend("chat", "sim-chat")
    with running(create_app(gateway_settings(chat))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        old = status(gw.url)["chat"]["pid"]
        page = open_page(gw)
        page.open()
        details = page.details("chat")
        details.locator("button[data-action='restart']").click()
        assert wait_for(lambda: "202" in page.tab.locator("#action-result").inner_text(), timeout=5)
        assert "restarting" in page.tab.locator("#action-result").inner_text()
        assert wait_for(lambda: status(gw.url)["chat"]["pid"] not in (None, old)
                        and status(gw.url)["chat"]["state"] == "ready", timeout=20)
        info = status(gw.url)["chat"]
        assert info["restarts"] == 1 and info["last_exit_code"] is not None
        assert page.wait_state("chat", "ready")
        # The timeline marks the restart (drawn every few seconds).
        assert wait_for(lambda: page.tab.locator("#timeline-chart line.mark-restart").count() == 1, timeout=10)
        # An always-resident backend without adapters offers no sleep, wake or adapter actions.
        assert details.locator("button[data-action='sleep']").count() == 0
        assert details.locator("button[data-action='load adapter']").count() == 0
        page.close()


def test_a_playground_message_streams_an_answer(open_page: Any) -> None:
    with running(simulator(["sim-chat"], CHAT, token_delay=0.05)) as chat, \
            gateway({"name": "chat", "url": chat.url}, api_keys=["client-key"], admin_api_key=ADMIN_KEY) as gw:
        page = open_page(gw)
        tab = page.open(ADMIN_KEY)
        tab.select_option("#chat-model", "sim-chat")
        tab.fill("#chat-max", "12")
        # Count how often the answer's text changes: a streamed answer arrives in pieces.
        tab.evaluate("""() => { window.answerChanges = 0; new MutationObserver(() => { window.answerChanges += 1; })
                            .observe(document.getElementById('chat-log'), {subtree: true, characterData: true, childList: true}); }""")
        tab.fill("#chat-input", "Say hello")
        tab.click("#chat-send")
        assert wait_for(lambda: "prompt" in tab.locator("#chat-meta").inner_text(), timeout=15)
        answer = tab.locator("#chat-log .assistant").inner_text()
        assert answer.strip() and tab.evaluate("window.answerChanges") >= 5
        assert "12 completion tokens" in tab.locator("#chat-meta").inner_text()
        # It went through the gateway like any request: listed in Activity, the cookie not sent upstream.
        assert wait_for(lambda: tab.locator("#activity-rows tr", has_text="playground-").count() == 1, timeout=5)
        sent = httpx.get(f"{chat.url}/_sim/stats").json()["requests"][-1]
        assert "cookie" not in sent["headers"] and "authorization" not in sent["headers"]
        page.close()


def test_a_backend_put_to_sleep_from_the_page_shows_asleep_and_answers_after_a_wake(open_page: Any) -> None:
    chat = sim_backend("chat", "sim-chat", residency="on_demand", gpu_memory_utilization=0.5)  # sleep mode
    with running(create_app(gateway_settings(chat, admin_api_key=ADMIN_KEY))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        page = open_page(gw)
        page.open(ADMIN_KEY)
        page.details("chat").locator("button[data-action='sleep']").click()
        assert page.wait_state("chat", "asleep", timeout=2)
        page.tab.locator("tr.details button[data-action='wake']").click()
        assert page.wait_state("chat", "awake", timeout=10)
        reply = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0).chat.completions.create(
            model="sim-chat", messages=[{"role": "user", "content": "still there?"}], max_tokens=3)
        assert reply.choices[0].message.content
        page.close()


def test_an_adapter_appears_after_it_is_loaded(open_page: Any, tmp_path: Path) -> None:
    adapter = write_adapter(tmp_path / "sql-lora")
    chat = sim_backend("chat", "sim-chat", args=["--enable-lora", "--max-loras", "2"],
                       env={"PYTHONPATH": ROOT, "VLLM_ALLOW_RUNTIME_LORA_UPDATING": "True"})
    chat["adapters"] = {"sql": str(adapter)}
    with running(create_app(gateway_settings(chat, admin_api_key=ADMIN_KEY))) as gw:
        assert wait_for(lambda: status(gw.url)["chat"]["state"] == "ready", timeout=20)
        page = open_page(gw)
        page.open(ADMIN_KEY)
        cell = page.tab.locator("tr.backend[data-backend='chat'] td").nth(4)
        assert cell.inner_text() == "sql ○"  # known, not loaded
        details = page.details("chat")
        # An action the server refuses shows its answer instead of breaking: an adapter not configured.
        details.locator("input[placeholder='adapter name']").fill("nope")
        details.locator("button[data-action='load adapter']").click()
        assert wait_for(lambda: "400" in page.tab.locator("#action-result").inner_text(), timeout=5)
        assert page.tab.locator("#action-result.bad").count() == 1
        assert "configured adapters: sql" in page.tab.locator("#action-result").inner_text()
        page.errors[:] = [e for e in page.errors if "status of 400" not in e]  # that answer
        details.locator("input[placeholder='adapter name']").fill("sql")
        details.locator("button[data-action='load adapter']").click()
        assert wait_for(lambda: cell.inner_text() == "sql ●", timeout=5)
        page.close()


def synthetic_hello(backends: int, rows: int) -> dict[str, Any]:
    """A snapshot of a big box: `backends` launched backends, `rows` requests, logs and an hour of timeline."""
    now = time.time()
    entries = []
    for i in range(backends):
        entries.append({
            "name": f"backend-{i:02d}", "url": f"http://127.0.0.1:{8000 + i}", "urls": [f"http://127.0.0.1:{8000 + i}"],
            "state": "ready" if i % 5 else "restarting", "models": [f"org/model-{i}"], "aliases": [f"m{i}"],
            "last_error": None if i % 5 else "exited unexpectedly with signal SIGKILL; last output:\n" + "line\n" * 15,
            "launched": True, "circuit": "closed", "pid": 1000 + i, "restarts": i % 3, "uptime_s": 3600.0 + i,
            "last_exit_code": None,
            "memory": {"status": "fits", "line": "plan: fits, share 0.04", "share": 0.04, "devices": ["0"]},
            "gpu_memory_bytes": {"0": 2 * GB},
            "traffic": {"in_flight": i, "waiting": 0, "requests_per_s": 1.5 * i, "errors_per_s": 0.0, "p50_s": 0.2,
                        "p99_s": 1.3, "window_s": 60},
            "engine": {"generation_tokens_per_s": 100.0 + i, "prompt_tokens_per_s": 20.0, "kv_cache_usage": i / backends,
                       "running": 2, "waiting": 0, "sleep_state": "awake", "age_s": 0.5},
            "adapters": {"configured": {f"lora-{i}": "/adapters/x"}, "addresses": [{"url": "u", "loaded": [f"lora-{i}"]}]},
        })
    activity = [{"seq": n + 1, "time": now - rows + n, "model": f"org/model-{n % backends}", "backend": f"backend-{n % backends:02d}",
                 "route": "/v1/chat/completions", "status": 200 if n % 17 else 503, "prompt_tokens": 12,
                 "completion_tokens": 80, "ttfb_s": 0.05, "duration_s": 1.2, "tokens_per_s": 70.0,
                 "request_id": f"req-{n:06d}", "stream": True} for n in range(rows)]
    runs = {e["name"]: {"runs": [[now - 3600 + k * 300, now - 3600 + (k + 1) * 300, "ready" if k % 2 else "asleep"]
                                 for k in range(12)], "marks": [[now - 1800, "restart"], [now - 900, "swap"]]}
            for e in entries}
    gpus = [{"index": 0, "uuid": "GPU-0", "name": "NVIDIA H200", "total_bytes": 141 * GB, "used_bytes": 60 * GB,
             "utilization": 0.4, "by_backend": {e["name"]: 2 * GB for e in entries}, "foreign": []}]
    return {"role": "admin", "signed_in": False, "config": {}, "limits": {"activity": rows, "log_lines": 1000},
            "status": {"schema_version": 1, "version": "0.1.0", "time": now, "shutting_down": False, "gpu_budget": 0.9,
                       "backends": entries, "gpus": gpus},
            "activity": activity,
            "logs": [{"seq": n + 1, "time": now, "source": "(gateway)", "level": "INFO", "text": f"line {n}"} for n in range(500)],
            "timeline": {"since": now - 3600, "until": now, "backends": runs}}


def test_twenty_backends_and_five_hundred_requests_render_quickly(open_page: Any) -> None:
    """Renders a synthetic snapshot of that size as the feed would and prints the time it took
    (the browser's own performance.measure around each render); the rows must all be there."""
    with running(simulator(["sim-chat"], CHAT)) as chat, gateway({"name": "chat", "url": chat.url}) as gw:
        page = open_page(gw)
        tab = page.open()
        tab.evaluate("window.vllmGatewayUi.disconnect()")  # only the synthetic snapshots from here on
        # Each render timed with the layout it causes (offsetHeight forces it inside the same task).
        render = """([kind, data]) => { const t0 = performance.now(); window.vllmGatewayUi.apply(kind, data);
                                        document.body.offsetHeight; return performance.now() - t0; }"""
        hello = tab.evaluate(render, ["hello", synthetic_hello(20, 500)])
        assert tab.locator("tr.backend").count() == 20 and tab.locator("#activity-rows tr").count() == 500
        assert "lora-3 ●" in tab.locator("tr.backend[data-backend='backend-03']").inner_text()
        tick = synthetic_hello(20, 0)
        del tick["role"], tick["config"], tick["limits"]
        ticks = []
        for n in range(10):
            tick["activity"] = [{**row, "seq": 10_000 + 20 * n + i} for i, row in enumerate(synthetic_hello(20, 20)["activity"])]
            ticks.append(tab.evaluate(render, ["tick", tick]))
        script = [t["total"] for t in tab.evaluate("window.vllmGatewayUi.state.renderTimes") if t["kind"] == "tick"][-10:]
        ticks.sort()
        script.sort()
        print(f"\noperator page, 20 backends + 500 activity rows + 500 log lines: first render {hello:.0f} ms with layout; "
              f"a tick (20 backends, 20 new rows, the timeline): median {ticks[5]:.1f} ms, max {ticks[-1]:.1f} ms with layout "
              f"(script alone: median {script[5]:.1f} ms)")
        assert tab.locator("#activity-rows tr").count() == 500  # bounded: the oldest went
        page.close()


def test_screenshot_of_three_backends_for_the_readme(open_page: Any, tmp_path: Path) -> None:
    """docs/operator-page.png is this test's screenshot (GATEWAY_UPDATE_SCREENSHOT=1, or `make screenshot`,
    writes it there); three launched backends planned from the fixtures' model files, on a fake 48 GB GPU."""
    embed = sim_backend("embed", EMBED_06B, kind="embedding", gpu_memory_utilization=0.15, max_model_len=8192)
    embed["models"] = ["Qwen/Qwen3-Embedding-0.6B"]
    guard = sim_backend("guard", QWEN3_8B, gpu_memory_utilization=0.55, max_model_len=32768, args=["--token-delay", "0.02"])
    guard["models"] = ["Qwen/Qwen3Guard-Gen-8B"]
    small = sim_backend("chat", QWEN3_06B, gpu_memory_utilization=0.15, max_model_len=16384, args=["--token-delay", "0.01"],
                        residency="on_demand")  # shown asleep
    small["models"], small["aliases"] = ["Qwen/Qwen3-0.6B"], ["gpt-4o-mini"]
    gpu = FakeGpu(0, total=48 * GB, used=2 * GB, busy=0.37, name="NVIDIA L40S")
    settings = gateway_settings(embed, guard, small, gpu={"memory": "48GB"}, health_check_interval=0.3)
    with running(create_app(settings, gpus=FakeGpus([gpu]))) as gw:
        assert wait_for(lambda: all(b["state"] == "ready" for b in status(gw.url).values()), timeout=40)
        pids = {name: b["pid"] for name, b in status(gw.url).items()}
        held = {"embed": 6.9 * GB, "guard": 25.8 * GB, "chat": 6.4 * GB}
        gpu.procs = [(pids[name], int(held[name])) for name in held] + [(4_000_000, int(0.6 * GB))]
        gpu.used = int(sum(held.values()) + 0.6 * GB)
        sdk = OpenAI(base_url=f"{gw.url}/v1", api_key="unused", max_retries=0)
        for n in range(6):
            for _ in sdk.chat.completions.create(model="gpt-4o-mini" if n % 2 else "Qwen/Qwen3Guard-Gen-8B", max_tokens=24,
                                                 messages=[{"role": "user", "content": f"question {n}"}], stream=True,
                                                 stream_options={"include_usage": True}):
                pass
            sdk.embeddings.create(model="Qwen/Qwen3-Embedding-0.6B", input=f"text {n}")
        page = open_page(gw)
        tab = page.open()
        assert wait_for(lambda: "guard" in tab.locator("#gpus").inner_text(), timeout=10)
        page.details("guard")
        for n in range(4):  # traffic while the page watches: the engines' tokens per second come from two readings
            sdk.chat.completions.create(model="Qwen/Qwen3Guard-Gen-8B", max_tokens=30,
                                        messages=[{"role": "user", "content": f"more {n}"}])
        assert wait_for(lambda: tab.locator("tr.backend[data-backend='guard'] td").nth(10).inner_text() not in ("–", "0.0"),
                        timeout=10)
        held["chat"] = 0.4 * GB  # what a sleeping vLLM keeps (its CUDA context), as NVML will say once it sleeps
        gpu.procs = [(pids[name], int(held[name])) for name in held] + [(4_000_000, int(0.6 * GB))]
        gpu.used = int(sum(held.values()) + 0.6 * GB)
        asleep = httpx.post(f"{gw.url}/admin/backends/chat/sleep", timeout=30)
        assert asleep.status_code == 200 and asleep.json()["state"] == "asleep"
        assert page.wait_state("chat", "asleep", timeout=5)
        target = SCREENSHOT if os.environ.get("GATEWAY_UPDATE_SCREENSHOT") else tmp_path / "operator-page.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        tab.screenshot(path=str(target), full_page=True)
        page.close()
        assert target.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_page_works_in_firefox_too(tmp_path: Path) -> None:
    """Debian's firefox-esr through its Marionette protocol (`tests/e2e/marionette.py`): sign in, the
    live table, a row's details, a streamed playground answer, and no error the page threw."""
    from tests.e2e.marionette import FIREFOX, firefox
    from tests.e2e.test_launch import free_port

    if not Path(FIREFOX).exists():
        message = "firefox-esr is not installed: run scripts/test-tools.sh (make test does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    with running(simulator(["sim-chat"], CHAT, token_delay=0.02)) as chat, running(simulator(["sim-embed"], EMBEDDING)) as embed, \
            gateway({"name": "chat", "url": chat.url}, {"name": "embed", "url": embed.url}, admin_api_key=ADMIN_KEY) as gw, \
            firefox(tmp_path / "profile", free_port()) as browser:
        browser.command("WebDriver:Navigate", url=f"{gw.url}/ui")
        browser.run("window.pageErrors = []; addEventListener('error', e => window.pageErrors.push(String(e.message)));"
                    "document.getElementById('key').value = arguments[0]; document.querySelector('form').submit();",
                    ADMIN_KEY)
        assert wait_for(lambda: browser.run("return document.getElementById('live') && "
                                            "document.getElementById('live').textContent") == "live", timeout=15)
        browser.run("window.pageErrors = []; addEventListener('error', e => window.pageErrors.push(String(e.message)));")
        assert wait_for(lambda: browser.run(
            "return [...document.querySelectorAll('tr.backend td.state')].map(c => c.textContent)") == ["ready", "ready"],
            timeout=10)
        assert browser.run("return [document.cookie, document.getElementById('role').textContent]") == ["", "admin"]
        browser.run("document.querySelector(\"tr.backend[data-backend='chat']\").dispatchEvent("
                    "new MouseEvent('click', {bubbles: true}));")
        assert wait_for(lambda: browser.run("return document.querySelectorAll('tr.details').length") == 1, timeout=5)
        browser.run("document.getElementById('chat-model').value = 'sim-chat'; document.getElementById('chat-max').value = '8';"
                    "document.getElementById('chat-input').value = 'hello'; document.getElementById('chat-send').click();")
        assert wait_for(lambda: "8 completion tokens" in browser.run("return document.getElementById('chat-meta').textContent"),
                        timeout=15)
        assert browser.run("return document.querySelector('#chat-log .assistant').textContent").strip()
        assert browser.run("return window.pageErrors") == []
        requests = browser.run("return performance.getEntriesByType('resource').map(e => e.name)")
        assert requests and all(url.startswith(gw.url + "/") for url in requests)
        browser.command("WebDriver:Navigate", url="about:blank")  # its event stream closed before the gateway stops
