// Umbra explorer: live updates for server-rendered pages. No dependencies, no CDN.
//
// The server renders every page completely. This script follows /events (one SSE `block` event
// per committed block) and re-fetches the HTML of each live section a block touched, draws the
// charts from /explorer/api/series, and drives the attestation re-verify button.
"use strict";

(() => {
  const $ = (sel, root = document) => root.querySelector(sel);
  const $$ = (sel, root = document) => Array.from(root.querySelectorAll(sel));

  // ---- live sections --------------------------------------------------------------------------
  // Each [data-section] element names its section, the modules whose events touch it
  // (data-watch: "*" every block, "tx" blocks with txs) and optionally an id (data-id) that an
  // event must mention. Fetches are throttled per section and never overlap.
  const MIN_INTERVAL_MS = 400;
  const sections = $$("[data-section]").map((el) => ({
    el,
    name: el.dataset.section,
    watch: (el.dataset.watch || "").split(/\s+/).filter(Boolean),
    id: (el.dataset.id || "").toLowerCase(),
    html: null,
    busy: false,
    again: false,
    last: 0,
    timer: null,
  }));

  function touches(sec, notice) {
    if (sec.watch.includes("*")) return true;
    if (sec.watch.includes("tx") && (notice.txs || []).length > 0) return true;
    for (const ev of notice.events || []) {
      if (!sec.watch.includes(ev.module)) continue;
      if (!sec.id || JSON.stringify(ev.data).toLowerCase().includes(sec.id)) return true;
    }
    return false;
  }

  function schedule(sec) {
    if (sec.busy) {
      sec.again = true;
      return;
    }
    if (sec.timer) return;
    const wait = Math.max(0, sec.last + MIN_INTERVAL_MS - Date.now());
    sec.timer = setTimeout(() => {
      sec.timer = null;
      refresh(sec);
    }, wait);
  }

  async function refresh(sec) {
    sec.busy = true;
    sec.last = Date.now();
    const query = sec.id ? `?id=${encodeURIComponent(sec.id)}` : "";
    try {
      const reply = await fetch(`/explorer/api/fragments/${encodeURIComponent(sec.name)}${query}`, {
        headers: { accept: "text/html" },
        cache: "no-store",
      });
      if (reply.ok) {
        const text = await reply.text();
        if (text !== sec.html) {
          // The fragment is HTML the server rendered (and escaped), like the page itself.
          sec.el.innerHTML = text;
          sec.html = text;
          sec.el.classList.remove("flash");
          void sec.el.offsetWidth; // restart the highlight animation
          sec.el.classList.add("flash");
        }
      }
    } catch (_err) {
      // The node is restarting or unreachable: the next block event retries.
    } finally {
      sec.busy = false;
      if (sec.again) {
        sec.again = false;
        schedule(sec);
      }
    }
  }

  // ---- charts ---------------------------------------------------------------------------------
  const chartsBox = $("[data-series]");
  const SVG = "http://www.w3.org/2000/svg";
  let chartsBusy = false;
  let chartsLast = 0;

  function svgEl(name, attrs) {
    const el = document.createElementNS(SVG, name);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, String(v));
    return el;
  }

  function fmt(value) {
    if (value === null || value === undefined) return "—";
    if (value >= 1000) return value.toFixed(0);
    if (value >= 10) return value.toFixed(1);
    return String(Math.round(value * 100) / 100);
  }

  function drawChart(fig, series) {
    const svg = $("svg", fig);
    const values = series[fig.dataset.metric] || [];
    const unit = fig.dataset.unit ? ` ${fig.dataset.unit}` : "";
    const W = 300;
    const H = 110;
    const left = 34;
    const bottom = 16;
    const top = 8;
    const known = values.filter((v) => v !== null);
    const max = Math.max(1, ...known);
    const n = Math.max(1, values.length);
    const x = (i) => left + ((W - left - 4) * i) / Math.max(1, n - 1);
    const y = (v) => top + (H - top - bottom) * (1 - v / max);
    while (svg.firstChild) svg.removeChild(svg.firstChild);
    svg.appendChild(svgEl("line", { x1: left, y1: H - bottom, x2: W - 4, y2: H - bottom, class: "axis" }));
    svg.appendChild(svgEl("line", { x1: left, y1: top, x2: left, y2: H - bottom, class: "axis" }));
    const maxLabel = svgEl("text", { x: left - 4, y: top + 8, class: "tick", "text-anchor": "end" });
    maxLabel.textContent = fmt(max);
    svg.appendChild(maxLabel);
    const zero = svgEl("text", { x: left - 4, y: H - bottom, class: "tick", "text-anchor": "end" });
    zero.textContent = "0";
    svg.appendChild(zero);
    const span = svgEl("text", { x: W - 4, y: H - 3, class: "tick", "text-anchor": "end" });
    span.textContent = "now";
    svg.appendChild(span);
    const start = svgEl("text", { x: left, y: H - 3, class: "tick" });
    start.textContent = `-${Math.round(series.window_s / 60)} min`;
    svg.appendChild(start);
    // One path per run of known values (latency is unknown in buckets without settled jobs).
    let d = "";
    values.forEach((v, i) => {
      if (v === null) return;
      const prev = i > 0 ? values[i - 1] : null;
      d += `${prev === null || i === 0 ? "M" : "L"}${x(i).toFixed(1)},${y(v).toFixed(1)} `;
    });
    if (d) svg.appendChild(svgEl("path", { d, class: "line" }));
    values.forEach((v, i) => {
      if (v !== null && v > 0 && fig.dataset.metric === "job_latency_ms") {
        svg.appendChild(svgEl("circle", { cx: x(i).toFixed(1), cy: y(v).toFixed(1), r: 2, class: "dot" }));
      }
    });
    const latest = [...values].reverse().find((v) => v !== null);
    const cap = $("figcaption", fig);
    cap.dataset.value = latest === undefined ? "—" : fmt(latest) + unit;
    fig.dataset.points = String(known.length);
  }

  async function refreshCharts(force) {
    if (!chartsBox || chartsBusy) return;
    if (!force && Date.now() - chartsLast < 2000) return;
    chartsBusy = true;
    chartsLast = Date.now();
    try {
      const reply = await fetch(chartsBox.dataset.series, { cache: "no-store" });
      if (reply.ok) {
        const series = await reply.json();
        for (const fig of $$("figure.chart", chartsBox)) drawChart(fig, series);
        chartsBox.dataset.updated = String(series.now_ms);
      }
    } catch (_err) {
      // retried on the next block or tick
    } finally {
      chartsBusy = false;
    }
  }

  // ---- server-sent events ---------------------------------------------------------------------
  const live = $("#live");
  const headEl = $("#head-height");

  function setLive(on) {
    if (!live) return;
    live.classList.toggle("on", on);
    live.classList.toggle("off", !on);
    live.textContent = on ? "live" : "reconnecting";
  }

  function onBlock(notice) {
    if (headEl) headEl.textContent = `#${notice.height}`;
    document.body.dataset.head = String(notice.height);
    for (const sec of sections) if (touches(sec, notice)) schedule(sec);
    refreshCharts(false);
  }

  function connect() {
    if (!("EventSource" in window)) return;
    const source = new EventSource("/events");
    source.addEventListener("open", () => setLive(true));
    source.addEventListener("error", () => setLive(false)); // EventSource reconnects by itself
    source.addEventListener("block", (e) => {
      try {
        onBlock(JSON.parse(e.data));
      } catch (_err) {
        // a malformed event is skipped; the next one refreshes everything it touches
      }
    });
    window.addEventListener("pagehide", () => source.close());
  }

  // ---- attestation re-verification ------------------------------------------------------------
  function reverifyButton() {
    const button = $("#reverify");
    if (!button) return;
    const out = $("#reverify-result");
    const status = $("#reverify-status");
    button.addEventListener("click", async () => {
      button.disabled = true;
      status.textContent = "verifying…";
      out.replaceChildren();
      try {
        const reply = await fetch(`/explorer/api/workers/${encodeURIComponent(button.dataset.worker)}/reverify`, {
          method: "POST",
          cache: "no-store",
        });
        const body = await reply.json();
        if (!reply.ok) {
          status.textContent = (body.error && body.error.message) || `failed (${reply.status})`;
          return;
        }
        const table = document.createElement("table");
        table.className = "grid checks";
        const head = table.createTHead().insertRow();
        for (const h of ["check", "result", "detail"]) {
          const th = document.createElement("th");
          th.textContent = h;
          head.appendChild(th);
        }
        const tbody = table.createTBody();
        for (const check of body.checks) {
          const row = tbody.insertRow();
          row.className = `check ${check.ok ? "pass" : "fail"}`;
          row.dataset.check = check.name;
          row.insertCell().textContent = check.name;
          const verdict = row.insertCell();
          const badge = document.createElement("span");
          badge.className = `badge ${check.ok ? "good" : "bad"}`;
          badge.textContent = check.ok ? "pass" : "fail";
          verdict.appendChild(badge);
          row.insertCell().textContent = check.detail;
        }
        out.appendChild(table);
        const failed = body.checks.filter((c) => !c.ok).length;
        status.textContent = failed
          ? `${failed} of ${body.checks.length} checks fail`
          : `all ${body.checks.length} checks pass (${new Date(body.at_ms).toISOString()})`;
        status.className = failed ? "bad-text" : "good-text";
        out.dataset.ok = String(body.ok);
      } catch (err) {
        status.textContent = `re-verification failed: ${err}`;
      } finally {
        button.disabled = false;
      }
    });
  }

  // ---- local times ----------------------------------------------------------------------------
  function localTimes(root) {
    for (const t of $$("time[datetime]", root)) {
      if (!t.title) t.title = new Date(t.getAttribute("datetime")).toLocaleString();
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    reverifyButton();
    localTimes(document);
    refreshCharts(true);
    if (chartsBox) setInterval(() => refreshCharts(true), 5000); // keep the time axis moving when idle
    connect();
    document.body.dataset.ready = "1";
  });
})();
