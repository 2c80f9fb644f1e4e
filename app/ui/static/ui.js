// vllm-gateway operator page. Plain JS, no build step, no outside requests.
// Data is only ever put in the page with textContent (never innerHTML).
"use strict";
(() => {
  const $ = (id) => document.getElementById(id);
  const el = (tag, cls, text) => {
    const node = document.createElement(tag);
    if (cls) node.className = cls;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  };
  const SVG = "http://www.w3.org/2000/svg";
  const svg = (tag, attrs) => {
    const node = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) node.setAttribute(k, String(v));
    return node;
  };

  // -- state -------------------------------------------------------------------------------
  const ui = {
    role: "view", status: null, config: {}, timeline: null, limits: { activity: 500, log_lines: 1000 },
    activity: [], activitySeq: 0, logSeq: 0, logsHeld: [], paused: false,
    sort: { key: "name", dir: 1 }, open: new Set(), rows: new Map(), details: new Map(), colors: new Map(),
    pinned: new Set(JSON.parse(localStorage.getItem("vg-pinned") || "[]")),
    models: new Set(), logSources: new Set(), renders: 0, renderTimes: [],
  };

  // -- formatting --------------------------------------------------------------------------
  const GiB = 1024 ** 3;
  const bytes = (n) => (n === null || n === undefined ? "–" : n >= GiB ? (n / GiB).toFixed(2) + " GiB" : (n / 1024 ** 2).toFixed(0) + " MiB");
  const ms = (s) => (s === null || s === undefined ? "–" : s < 1 ? (s * 1000).toFixed(s < 0.01 ? 1 : 0) + " ms" : s.toFixed(2) + " s");
  const num = (n, digits = 1) => (n === null || n === undefined ? "–" : Number(n).toFixed(digits));
  const pct = (x) => (x === null || x === undefined ? "–" : (x * 100).toFixed(1) + " %");
  const dash = (x) => (x === null || x === undefined || x === "" ? "–" : String(x));
  // toLocaleTimeString builds a formatter per call (slow for 500 rows): formatted by hand instead.
  const two = (n) => (n < 10 ? "0" + n : String(n));
  const clock = (t) => { const d = new Date(t * 1000); return `${two(d.getHours())}:${two(d.getMinutes())}:${two(d.getSeconds())}`; };
  const duration = (s) => {
    if (s === null || s === undefined) return "–";
    const h = Math.floor(s / 3600), m = Math.floor((s % 3600) / 60), sec = Math.floor(s % 60);
    return h ? `${h}h ${m}m` : m ? `${m}m ${sec}s` : `${sec}s`;
  };
  const colorOf = (name) => {
    if (!ui.colors.has(name)) ui.colors.set(name, "c" + (ui.colors.size % 8));
    return ui.colors.get(name);
  };
  // The word a backend's state shows: residency's (awake, asleep, ...) while ready, else its own.
  const shownState = (b) => (b.state === "ready" && b.residency && typeof b.residency.state === "string" ? b.residency.state : b.state);

  // -- residency: "always resident", or on demand with its mode, state, swaps and last wake --
  const residencyText = (r) => {
    if (!r || r.mode !== "on_demand") return "always resident";
    const swaps = r.swaps && typeof r.swaps === "object" ? Object.entries(r.swaps).map(([d, n]) => `${n} ${d}`).join(", ") : String(r.swaps ?? 0);
    return `on demand (${r.swap || "sleep"}) · ${r.state}` + (swaps ? ` · swaps ${swaps}` : "")
      + (r.last_wake_s != null ? ` · last wake ${r.last_wake_s} s` : "") + (r.last_used ? ` · last used ${r.last_used}` : "")
      + (r.error ? ` · ${r.error}` : "");
  };

  // -- adapters: {configured: {name: source} | [names], addresses: [{url, loaded: [...]}] | loaded: {url: [...]}} --
  const adapterInfo = (b) => {
    const a = b.adapters;
    if (!a || typeof a !== "object") return { known: [], loaded: {} };
    const known = Array.isArray(a.configured) ? a.configured.map(String) : Object.keys(a.configured || {});
    const loaded = {};
    if (Array.isArray(a.addresses)) for (const addr of a.addresses) loaded[addr.url] = (addr.loaded || []).map(String);
    else if (a.loaded && typeof a.loaded === "object") for (const [url, names] of Object.entries(a.loaded)) loaded[url] = (names || []).map(String);
    return { known, loaded };
  };
  const loadedSet = (info) => new Set(Object.values(info.loaded).flat());

  // -- GPU ---------------------------------------------------------------------------------
  function renderGpus(status) {
    const box = $("gpus");
    box.replaceChildren();
    const backends = status.backends;
    if (status.gpus === null || status.gpus === undefined) {
      box.append(el("p", "muted", "No NVML: GPU memory is not read on this gateway (install vllm-gateway[gpu] where an NVIDIA driver runs). Planned shares of each GPU:"));
      const planned = backends.filter((b) => b.memory && typeof b.memory.share === "number");
      if (!planned.length) box.append(el("p", "muted", "No launched backend has a planned share."));
      else box.append(gpuBlock("planned shares", null, planned.map((b) => [b.name, b.memory.share]), null, status.gpu_budget));
      return;
    }
    if (!status.gpus.length) box.append(el("p", "muted", "NVML is loaded but has not read the GPUs yet."));
    for (const gpu of status.gpus) {
      const total = gpu.total_bytes;
      const mine = backends.filter((b) => b.memory && typeof b.memory.share === "number" && (b.memory.devices || ["0"]).includes(String(gpu.index)));
      const plannedParts = mine.map((b) => [b.name, b.memory.share]);
      const held = Object.entries(gpu.by_backend || {}).map(([name, n]) => [name, n / total]);
      const foreign = (gpu.foreign || []).reduce((sum, f) => sum + (f.bytes || 0), 0);
      const title = `GPU ${gpu.index} · ${gpu.name} · ${bytes(gpu.used_bytes)} of ${bytes(total)} used · ${bytes(total - gpu.used_bytes)} free` +
        (gpu.utilization === null || gpu.utilization === undefined ? "" : ` · ${pct(gpu.utilization)} busy`);
      box.append(gpuBlock(title, total, plannedParts, { held, foreign: foreign / total, used: gpu.used_bytes / total }, status.gpu_budget));
    }
  }

  function gpuBlock(title, total, planned, held, budget) {
    const block = el("div", "gpu");
    block.append(el("h3", "", title));
    const row = (label, parts, rest) => {
      const line = el("div", "barlabel");
      line.append(el("span", "muted", label));
      const bar = el("div", "bar");
      bar.setAttribute("role", "img");
      const words = [];
      for (const [name, frac, cls] of parts) {
        const part = el("span", cls || colorOf(name));
        part.style.width = Math.max(0, Math.min(100, frac * 100)) + "%";
        const what = `${name}: ${(frac * 100).toFixed(1)} %` + (total ? ` (${bytes(frac * total)})` : "");
        part.title = what;
        words.push(what);
        bar.append(part);
      }
      if (rest) words.push(rest);
      if (budget && label === "planned") {
        const mark = el("span", "budget");
        mark.style.left = budget * 100 + "%";
        mark.title = `budget ${budget}`;
        bar.append(mark);
        words.push(`budget ${(budget * 100).toFixed(0)} %`);
      }
      bar.setAttribute("aria-label", `${label}: ${words.join(", ")}`);
      line.append(bar);
      block.append(line);
    };
    const plannedSum = planned.reduce((s, p) => s + p[1], 0);
    row("planned", planned, `free ${((1 - plannedSum) * 100).toFixed(1)} %`);
    if (held) {
      const parts = held.held.slice();
      if (held.foreign > 0) parts.push(["not ours", held.foreign, "cforeign"]);
      const known = parts.reduce((s, p) => s + p[1], 0);
      if (held.used - known > 0.001) parts.push(["other use", held.used - known, "cforeign"]);
      row("held (NVML)", parts, `free ${((1 - held.used) * 100).toFixed(1)} %`);
    }
    const legend = el("p", "legend muted");
    const names = new Set([...planned.map((p) => p[0]), ...(held ? held.held.map((p) => p[0]) : [])]);
    for (const name of names) {
      legend.append(el("span", "key " + colorOf(name)), document.createTextNode(name));
    }
    if (held) legend.append(el("span", "key cforeign"), document.createTextNode("not a backend"), el("span", "key cfree"), document.createTextNode("free"));
    block.append(legend);
    return block;
  }

  // -- Backends ----------------------------------------------------------------------------
  const sortValue = {
    name: (b) => b.name, state: (b) => shownState(b), models: (b) => (b.models || []).join(","),
    uptime: (b) => b.uptime_s ?? -1, restarts: (b) => b.restarts ?? 0,
    inflight: (b) => (b.traffic ? b.traffic.in_flight + b.traffic.waiting : 0), rps: (b) => (b.traffic && b.traffic.requests_per_s) || 0,
    p99: (b) => (b.traffic && b.traffic.p99_s) || 0, tps: (b) => (b.engine && b.engine.generation_tokens_per_s) || 0,
    kv: (b) => (b.engine && b.engine.kv_cache_usage) || 0,
  };

  function renderBackends(status) {
    const query = $("backend-search").value.trim().toLowerCase();
    const { key, dir } = ui.sort;
    let list = status.backends.slice();
    if (query) {
      list = list.filter((b) => [b.name, shownState(b), ...(b.models || []), ...(b.aliases || [])].join(" ").toLowerCase().includes(query));
    }
    list.sort((a, b) => {
      const pin = (ui.pinned.has(b.name) ? 1 : 0) - (ui.pinned.has(a.name) ? 1 : 0);
      if (pin) return pin;
      const x = sortValue[key](a), y = sortValue[key](b);
      return (x < y ? -1 : x > y ? 1 : 0) * dir;
    });
    $("backend-count").textContent = `${list.length} of ${status.backends.length}`;
    const body = $("backend-rows");
    const nodes = [];
    for (const b of list) {
      nodes.push(backendRow(b));
      if (ui.open.has(b.name)) nodes.push(detailsRow(b));
    }
    // Rows are kept per backend and put in order without moving those already in place, so focus
    // (a typed adapter name, a row chosen by keyboard) survives each tick.
    nodes.forEach((node, i) => { if (body.children[i] !== node) body.insertBefore(node, body.children[i] || null); });
    while (body.children.length > nodes.length) body.lastElementChild.remove();
  }

  function backendRow(b) {
    let kept = ui.rows.get(b.name);
    if (!kept) {
      const tr = el("tr", "backend");
      tr.tabIndex = 0;
      tr.dataset.backend = b.name;
      const pinCell = el("td");
      const pin = el("button", "pin");
      pin.type = "button";
      pin.dataset.pin = b.name;
      pinCell.append(pin);
      const cells = [];
      for (let i = 0; i < 12; i++) cells.push(el("td"));
      tr.append(pinCell, ...cells);
      kept = { tr, pin, cells };
      ui.rows.set(b.name, kept);
    }
    const pinned = ui.pinned.has(b.name);
    setText(kept.pin, pinned ? "★" : "☆");
    kept.pin.setAttribute("aria-label", (pinned ? "unpin " : "pin ") + b.name);
    kept.tr.setAttribute("aria-expanded", ui.open.has(b.name) ? "true" : "false");
    const state = shownState(b);
    const t = b.traffic || {};
    const e = b.engine || {};
    const info = adapterInfo(b);
    const loaded = loadedSet(info);
    const adapters = info.known.length ? info.known.map((n) => (loaded.has(n) ? n + " ●" : n + " ○")).join(", ") : "–";
    const values = [
      ["mono", b.name], ["state s-" + state, state],
      ["", (b.models || []).join(", ") + (b.aliases && b.aliases.length ? ` (aliases: ${b.aliases.join(", ")})` : "")],
      ["", adapters], ["num", b.launched ? duration(b.uptime_s) : "external"], ["num", b.launched ? b.restarts : "–"],
      ["num", `${dash(t.in_flight)} / ${dash(t.waiting)}`], ["num", num(t.requests_per_s, 2)],
      ["num", `${ms(t.p50_s)} / ${ms(t.p99_s)}`], ["num", num(e.generation_tokens_per_s)], ["num", pct(e.kv_cache_usage)],
      ["err", b.last_error ? b.last_error.split("\n")[0] : ""],
    ];
    values.forEach(([cls, text], i) => {
      const cell = kept.cells[i];
      if (cell.className !== cls) cell.className = cls;
      setText(cell, text);
    });
    kept.cells[11].title = b.last_error || "";
    return kept.tr;
  }

  function setText(node, text) {
    const value = String(text);
    if (node.textContent !== value) node.textContent = value;
  }

  // A details row is built once while open and its facts refreshed each tick; its actions (an
  // adapter name being typed, a focused button) are kept as they are.
  function detailsRow(b) {
    let kept = ui.details.get(b.name);
    const info = adapterInfo(b);
    if (!kept || kept.role !== ui.role) {
      const tr = el("tr", "details");
      const td = el("td");
      td.colSpan = 13;
      const facts = el("div");
      const box = actions(b, info);
      const more = el("details");
      more.append(el("summary", "", "Configuration"), el("pre", "", JSON.stringify(ui.config[b.name] || {}, null, 2)));
      td.append(facts, box, more);
      tr.append(td);
      kept = { tr, facts, box, role: ui.role };
      ui.details.set(b.name, kept);
    }
    const list = kept.box.querySelector("datalist");
    if (list && list.children.length !== info.known.length) {
      list.replaceChildren(...info.known.map((name) => { const o = el("option"); o.value = name; return o; }));
    }
    const dl = el("dl");
    const add = (k, v) => { dl.append(el("dt", "", k), el("dd", "mono", v)); };
    add("addresses", (b.urls || []).join(", "));
    add("state", `${b.state} · ${residencyText(b.residency)} · circuit ${b.circuit}`);
    if (b.launched) add("process", `pid ${dash(b.pid)} · restarts ${b.restarts} · last exit code ${dash(b.last_exit_code)}`);
    if (b.limits) add("limits", JSON.stringify(b.limits));
    if (b.memory) add("memory plan", b.memory.line || b.memory.status);
    if (b.gpu_memory_bytes) add("GPU memory held", Object.entries(b.gpu_memory_bytes).map(([g, n]) => `GPU ${g}: ${bytes(n)}`).join(", ") || "–");
    if (b.engine) add("vLLM", `running ${b.engine.running} · waiting ${b.engine.waiting} · prompt ${num(b.engine.prompt_tokens_per_s)} tok/s · generation ${num(b.engine.generation_tokens_per_s)} tok/s · KV ${pct(b.engine.kv_cache_usage)}` + (b.engine.sleep_state ? ` · ${b.engine.sleep_state}` : ""));
    for (const [url, names] of Object.entries(info.loaded)) add("adapters at " + url, names.join(", ") || "none loaded");
    const facts = [dl];
    if (b.last_error) facts.push(el("strong", "", "Last error"), el("pre", "", b.last_error));
    kept.facts.replaceChildren(...facts);
    return kept.tr;
  }

  // The admin routes a script would call (README, "Admin routes").
  const ACTIONS = {
    restart: (n) => [`/admin/backends/${encodeURIComponent(n)}/restart`, null],
    sleep: (n) => [`/admin/backends/${encodeURIComponent(n)}/sleep`, null],
    wake: (n) => [`/admin/backends/${encodeURIComponent(n)}/wake`, null],
    "load adapter": (n, a) => [`/admin/backends/${encodeURIComponent(n)}/adapters/load`, { adapter: a }],
    "unload adapter": (n, a) => [`/admin/backends/${encodeURIComponent(n)}/adapters/unload`, { adapter: a }],
  };

  function actions(b, info) {
    const box = el("div", "actions");
    const admin = ui.role === "admin";
    const button = (label, adapterInput) => {
      const btn = el("button", "", label[0].toUpperCase() + label.slice(1));
      btn.type = "button";
      btn.dataset.action = label;
      btn.dataset.backend = b.name;
      if (!admin) { btn.disabled = true; btn.title = "needs the admin key"; }
      if (adapterInput) btn.dataset.adapterInput = adapterInput;
      return btn;
    };
    if (b.launched) box.append(button("restart"));
    // Sleep and wake only where they mean something: an on-demand backend (launch.residency).
    if (b.residency && b.residency.mode === "on_demand") box.append(button("sleep"), button("wake"));
    if (!info.known.length) {  // no adapters configured: nothing to load or unload
      if (!admin) box.append(el("span", "muted", "Actions need the admin key."));
      return box;
    }
    const id = "adapter-" + b.name.replace(/[^A-Za-z0-9_-]/g, "_");
    const input = el("input");
    input.id = id;
    input.placeholder = "adapter name";
    input.setAttribute("aria-label", "adapter for " + b.name);
    input.setAttribute("list", id + "-list");
    const list = el("datalist");
    list.id = id + "-list";
    box.append(input, list, button("load adapter", id), button("unload adapter", id));
    if (!admin) box.append(el("span", "muted", "Actions need the admin key."));
    return box;
  }

  async function act(button) {
    const backend = button.dataset.backend, action = button.dataset.action;
    let adapter = null;
    if (button.dataset.adapterInput) {
      adapter = $(button.dataset.adapterInput).value.trim();
      if (!adapter) { say(`Name an adapter to ${action.split(" ")[0]}.`, false); return; }
    }
    if (!window.confirm(`${action[0].toUpperCase() + action.slice(1)} ${adapter ? `"${adapter}" on ` : ""}backend "${backend}"?`)) return;
    const [url, body] = ACTIONS[action](backend, adapter);
    say(`${action} ${backend}: sent…`, null);
    try {
      const response = await fetch(url, {
        method: "POST", credentials: "same-origin",
        headers: body ? { "content-type": "application/json" } : {}, body: body ? JSON.stringify(body) : undefined,
      });
      const text = await response.text();
      let message = text;
      try {
        const data = JSON.parse(text);
        message = data.error ? data.error.message : data.result || data.message || JSON.stringify(data);
      } catch (_) { /* not JSON: shown as it came */ }
      say(`${action} ${backend}: ${response.status} ${response.statusText} — ${message}`, response.ok);
    } catch (error) {
      say(`${action} ${backend}: the gateway did not answer (${error})`, false);
    }
  }

  function say(text, ok) {
    const out = $("action-result");
    out.textContent = text;
    out.className = "result" + (ok === true ? " good" : ok === false ? " bad" : "");
  }

  // -- Activity ----------------------------------------------------------------------------
  function activityRow(r) {
    const tr = el("tr");
    tr.dataset.model = r.model;
    tr.dataset.status = r.status;
    const statusCell = el("td", "num " + (r.status >= 500 ? "s-failed" : r.status >= 400 ? "s-starting" : ""), r.status);
    tr.append(el("td", "mono", clock(r.time)), el("td", "", r.model), el("td", "", r.backend), el("td", "mono", r.route),
      statusCell, el("td", "num", dash(r.prompt_tokens)), el("td", "num", dash(r.completion_tokens)),
      el("td", "num", ms(r.ttfb_s)), el("td", "num", ms(r.duration_s)), el("td", "num", num(r.tokens_per_s)),
      el("td", "mono", r.request_id));
    return tr;
  }

  function addActivity(rows, replace) {
    const body = $("activity-rows");
    if (replace) { body.replaceChildren(); ui.activitySeq = 0; }
    const fresh = rows.filter((r) => r.seq > ui.activitySeq);
    if (!fresh.length) return;
    ui.activitySeq = fresh[fresh.length - 1].seq;
    const select = $("activity-model");
    const frag = document.createDocumentFragment();
    for (let i = fresh.length - 1; i >= 0; i--) {
      const row = activityRow(fresh[i]);
      row.hidden = !activityShown(row);
      frag.append(row);
      if (!ui.models.has(fresh[i].model)) {
        ui.models.add(fresh[i].model);
        const o = el("option", "", fresh[i].model);
        o.value = fresh[i].model;
        select.append(o);
      }
    }
    body.prepend(frag);
    while (body.children.length > ui.limits.activity) body.lastElementChild.remove();
    $("activity-count").textContent = `last ${body.children.length}`;
  }

  function activityShown(row) {
    const model = $("activity-model").value, status = $("activity-status").value, code = Number(row.dataset.status);
    if (model && row.dataset.model !== model) return false;
    if (!status) return true;
    if (status === "err") return code < 200 || code >= 300;
    if (status === "499") return code === 499;
    return String(code)[0] === status && code !== 499;
  }

  function refilterActivity() {
    for (const row of $("activity-rows").children) row.hidden = !activityShown(row);
  }

  // -- Timeline ----------------------------------------------------------------------------
  function renderTimeline(timeline) {
    const box = $("timeline-chart");
    if (!timeline) return;
    const names = Object.keys(timeline.backends);
    const width = 1000, left = 140, rowH = 18, top = 6, height = top + names.length * (rowH + 4) + 22;
    const span = timeline.until - timeline.since || 1;
    const x = (t) => left + ((t - timeline.since) / span) * (width - left - 10);
    const chart = svg("svg", { viewBox: `0 0 ${width} ${height}`, width: "100%", role: "img", "aria-label": "Backend states over the last hour" });
    const states = new Set();
    names.forEach((name, i) => {
      const y = top + i * (rowH + 4);
      const label = svg("text", { x: 4, y: y + rowH - 5 });
      label.textContent = name;
      chart.append(label);
      for (const [start, end, state] of timeline.backends[name].runs) {
        states.add(state);
        const rect = svg("rect", { x: x(start), y, width: Math.max(1, x(end) - x(start)), height: rowH, class: "run-" + state });
        const tip = svg("title");
        tip.textContent = `${name}: ${state} ${clock(start)}–${clock(end)}`;
        rect.append(tip);
        chart.append(rect);
      }
      for (const [at, kind] of timeline.backends[name].marks) {
        const mark = svg("line", { x1: x(at), x2: x(at), y1: y - 2, y2: y + rowH + 2, class: "mark-" + kind });
        const tip = svg("title");
        tip.textContent = `${name}: ${kind} at ${clock(at)}`;
        mark.append(tip);
        chart.append(mark);
      }
    });
    const axisY = top + names.length * (rowH + 4) + 4;
    chart.append(svg("line", { x1: left, x2: width - 10, y1: axisY, y2: axisY, class: "axis" }));
    for (let m = 60; m >= 0; m -= 15) {
      const t = timeline.until - m * 60;
      if (t < timeline.since) continue;
      const tick = svg("text", { x: x(t) - 12, y: axisY + 14 });
      tick.textContent = m ? `-${m} min` : "now";
      chart.append(tick);
    }
    box.replaceChildren(chart);
    $("timeline-legend").textContent = `States: ${[...states].join(", ") || "none yet"} · red line: restart · blue line: swap`;
  }

  // -- Logs --------------------------------------------------------------------------------
  function addLogs(lines) {
    const fresh = lines.filter((l) => l.seq > ui.logSeq);
    if (!fresh.length) return;
    ui.logSeq = fresh[fresh.length - 1].seq;
    const select = $("log-source");
    for (const line of fresh) {
      if (!ui.logSources.has(line.source)) {
        ui.logSources.add(line.source);
        const o = el("option", "", line.source === "(gateway)" ? "gateway" : line.source);
        o.value = line.source;
        select.append(o);
      }
    }
    if (ui.paused) {
      ui.logsHeld.push(...fresh);
      if (ui.logsHeld.length > ui.limits.log_lines) ui.logsHeld.splice(0, ui.logsHeld.length - ui.limits.log_lines);
      $("log-held").textContent = `${ui.logsHeld.length} new lines held while paused`;
      return;
    }
    showLogs(fresh);
  }

  function showLogs(lines) {
    const box = $("log-lines");
    const atBottom = box.scrollHeight - box.scrollTop - box.clientHeight < 30;
    const source = $("log-source").value;
    const frag = document.createDocumentFragment();
    for (const line of lines) {
      const row = el("div", "lvl-" + (line.level || "none"));
      row.dataset.source = line.source;
      row.append(el("span", "src", `${clock(line.time)} [${line.source === "(gateway)" ? "gateway" : line.source}] `), document.createTextNode(line.text));
      row.hidden = Boolean(source) && source !== line.source;
      frag.append(row);
    }
    box.append(frag);
    while (box.children.length > ui.limits.log_lines) box.firstElementChild.remove();
    if (atBottom) box.scrollTop = box.scrollHeight;
  }

  // -- Playground --------------------------------------------------------------------------
  const chat = { messages: [], abort: null };

  function renderModels(status) {
    const select = $("chat-model");
    const names = [];
    for (const b of status.backends) for (const m of [...(b.models || []), ...(b.aliases || [])]) if (!names.includes(m)) names.push(m);
    const have = [...select.options].map((o) => o.value);
    if (have.join("\n") === names.join("\n")) return;
    const chosen = select.value;
    select.replaceChildren(...names.map((n) => { const o = el("option", "", n); o.value = n; return o; }));
    if (names.includes(chosen)) select.value = chosen;
  }

  async function send(event) {
    event.preventDefault();
    const text = $("chat-input").value.trim();
    if (!text || chat.abort) return;
    const model = $("chat-model").value;
    chat.messages.push({ role: "user", content: text });
    $("chat-input").value = "";
    const log = $("chat-log");
    log.append(el("div", "user", "you → " + model + ": " + text));
    const answer = el("div", "assistant");
    log.append(answer);
    chat.abort = new AbortController();
    $("chat-send").disabled = true;
    $("chat-stop").disabled = false;
    const started = performance.now();
    let firstAt = null, usage = null, reply = "";
    try {
      const response = await fetch("/ui/playground", {
        method: "POST", credentials: "same-origin", signal: chat.abort.signal,
        headers: { "content-type": "application/json", "x-request-id": "playground-" + Math.random().toString(16).slice(2, 14) },
        body: JSON.stringify({ model, messages: chat.messages, stream: true, stream_options: { include_usage: true },
          max_tokens: Number($("chat-max").value) || 128 }),
      });
      if (!response.ok || !response.body) {
        const body = await response.text();
        let message = body;
        try { message = JSON.parse(body).error.message; } catch (_) { /* as it came */ }
        answer.textContent = `${response.status}: ${message}`;
        answer.classList.add("s-failed");
        chat.messages.pop();
        return;
      }
      const reader = response.body.getReader();
      const decoder = new TextDecoder();
      let pending = "";
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        pending += decoder.decode(value, { stream: true });
        const events = pending.split("\n\n");
        pending = events.pop();
        for (const ev of events) {
          for (const line of ev.split("\n")) {
            if (!line.startsWith("data:")) continue;
            const data = line.slice(5).trim();
            if (data === "[DONE]") continue;
            let chunk;
            try { chunk = JSON.parse(data); } catch (_) { continue; }
            if (chunk.error) { answer.append(el("span", "s-failed", ` [${chunk.error.message}]`)); continue; }
            if (chunk.usage) usage = chunk.usage;
            const delta = chunk.choices && chunk.choices[0] && chunk.choices[0].delta;
            if (delta && delta.content) {
              if (firstAt === null) firstAt = performance.now();
              reply += delta.content;
              answer.textContent = reply;
            }
          }
        }
      }
      chat.messages.push({ role: "assistant", content: reply });
      const took = (performance.now() - started) / 1000;
      $("chat-meta").textContent = `first token ${firstAt === null ? "–" : ms((firstAt - started) / 1000)} · ${took.toFixed(2)} s` +
        (usage ? ` · ${usage.prompt_tokens} prompt + ${usage.completion_tokens} completion tokens` : "");
    } catch (error) {
      answer.append(el("span", "muted", error.name === "AbortError" ? " [stopped]" : ` [${error}]`));
      if (reply) chat.messages.push({ role: "assistant", content: reply }); else chat.messages.pop();
    } finally {
      chat.abort = null;
      $("chat-send").disabled = false;
      $("chat-stop").disabled = true;
      log.scrollTop = log.scrollHeight;
    }
  }

  // -- the feed ----------------------------------------------------------------------------
  function apply(kind, data) {
    const started = performance.now();
    const lap = {};
    const step = (name) => { lap[name] = performance.now(); };
    if (kind === "hello") {
      ui.role = data.role;
      ui.config = data.config || {};
      ui.limits = data.limits || ui.limits;
      $("role").textContent = data.role === "admin" ? "admin" : "watching (no actions)";
      document.querySelector("form.logout").hidden = !data.signed_in;
      addActivity(data.activity, true);
      step("activity");
      $("log-lines").replaceChildren();
      ui.logSeq = 0;
      addLogs(data.logs);
    } else {
      addActivity(data.activity || [], false);
      step("activity");
      addLogs(data.logs || []);
    }
    step("logs");
    if (data.timeline) ui.timeline = data.timeline;
    ui.status = data.status;
    $("version").textContent = "v" + data.status.version + (data.status.shutting_down ? " · shutting down" : "");
    renderGpus(data.status);
    step("gpus");
    renderBackends(data.status);
    step("backends");
    renderModels(data.status);
    if (data.timeline) renderTimeline(data.timeline);
    step("timeline");
    // The last renders' times (ms), for the browser test and a curious operator's console.
    const t = { kind, total: performance.now() - started };
    let before = started;
    for (const [name, at] of Object.entries(lap)) { t[name] = at - before; before = at; }
    ui.renderTimes.push(t);
    if (ui.renderTimes.length > 50) ui.renderTimes.shift();
    ui.renders += 1;
    document.body.dataset.renders = String(ui.renders);
  }

  function connect() {
    const live = $("live");
    const source = ui.source = new EventSource("/ui/events");
    source.addEventListener("hello", (e) => { live.textContent = "live"; live.className = "pill live"; apply("hello", JSON.parse(e.data)); });
    source.addEventListener("tick", (e) => apply("tick", JSON.parse(e.data)));
    source.onerror = async () => {
      live.textContent = "reconnecting";
      live.className = "pill down";
      try {
        const r = await fetch("/ui/session", { credentials: "same-origin" });
        if (r.status === 401) { source.close(); window.location.reload(); }
      } catch (_) { /* the gateway is away: EventSource keeps retrying */ }
    };
  }

  // -- wiring ------------------------------------------------------------------------------
  function wire() {
    $("backend-search").addEventListener("input", () => ui.status && renderBackends(ui.status));
    for (const b of document.querySelectorAll("th button[data-sort]")) {
      b.addEventListener("click", () => {
        const key = b.dataset.sort;
        ui.sort = { key, dir: ui.sort.key === key ? -ui.sort.dir : 1 };
        for (const other of document.querySelectorAll("th button[data-sort]")) other.removeAttribute("aria-sort");
        b.setAttribute("aria-sort", ui.sort.dir > 0 ? "ascending" : "descending");
        if (ui.status) renderBackends(ui.status);
      });
    }
    const rows = $("backend-rows");
    const toggle = (tr) => {
      const name = tr.dataset.backend;
      if (ui.open.has(name)) { ui.open.delete(name); ui.details.delete(name); } else ui.open.add(name);
      renderBackends(ui.status);
    };
    rows.addEventListener("click", (e) => {
      const pin = e.target.closest("button[data-pin]");
      if (pin) {
        const name = pin.dataset.pin;
        if (ui.pinned.has(name)) ui.pinned.delete(name); else ui.pinned.add(name);
        localStorage.setItem("vg-pinned", JSON.stringify([...ui.pinned]));
        renderBackends(ui.status);
        return;
      }
      const action = e.target.closest("button[data-action]");
      if (action) { act(action); return; }
      if (e.target.closest("tr.details")) return;
      const tr = e.target.closest("tr.backend");
      if (tr) toggle(tr);
    });
    rows.addEventListener("keydown", (e) => {
      const tr = e.target.closest && e.target.closest("tr.backend");
      if (tr && e.target === tr && (e.key === "Enter" || e.key === " ")) { e.preventDefault(); toggle(tr); }
    });
    $("activity-model").addEventListener("change", refilterActivity);
    $("activity-status").addEventListener("change", refilterActivity);
    $("log-source").addEventListener("change", () => {
      const source = $("log-source").value;
      for (const row of $("log-lines").children) row.hidden = Boolean(source) && source !== row.dataset.source;
    });
    $("log-pause").addEventListener("click", () => {
      ui.paused = !ui.paused;
      $("log-pause").setAttribute("aria-pressed", String(ui.paused));
      $("log-pause").textContent = ui.paused ? "Resume" : "Pause";
      if (!ui.paused) { showLogs(ui.logsHeld); ui.logsHeld = []; $("log-held").textContent = ""; }
    });
    $("chat-form").addEventListener("submit", send);
    $("chat-input").addEventListener("keydown", (e) => { if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) send(e); });
    $("chat-stop").addEventListener("click", () => chat.abort && chat.abort.abort());
    $("chat-new").addEventListener("click", () => { chat.messages = []; $("chat-log").replaceChildren(); $("chat-meta").textContent = ""; });
  }

  // For the browser tests and anyone curious: render a snapshot as the feed would.
  window.vllmGatewayUi = { apply, state: ui, disconnect: () => ui.source && ui.source.close() };
  wire();
  connect();
})();
