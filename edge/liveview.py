"""Live view for the person at the line: ``GET /`` of the status endpoint.

``LiveView`` keeps, in bounded memory, what the page shows besides the counters:
  * the score trace of the last ``horizon_s`` seconds, as one point per ``bucket_s`` seconds
    holding the bucket's MAXIMUM score (a one-frame spike is never averaged away);
  * the last ``max_alarms`` alarm events ("raise"/"clear") with the raise's heat-map overlay JPEG.
The runner feeds it from the frame loop (cheap, thread-safe); the status server reads it.

``PAGE`` is the self-contained HTML page (inline CSS + JS, no external assets: it works on a
box without internet).  It polls ``/live.json`` once a second and reloads ``/latest.jpg``.
"""
from __future__ import annotations

import math
import threading
import time
from collections import deque
from typing import Any

MAX_ALARMS = 8
TRACE_HORIZON_S = 300.0
TRACE_BUCKET_S = 0.5


class LiveView:
    """Score trace ring + last alarms (with snapshots) for the live page (thread-safe)."""

    def __init__(self, horizon_s: float = TRACE_HORIZON_S, bucket_s: float = TRACE_BUCKET_S,
                 max_alarms: int = MAX_ALARMS) -> None:
        if not horizon_s > 0 or not bucket_s > 0:
            raise ValueError("horizon_s and bucket_s must be > 0")
        self.horizon_s, self.bucket_s = float(horizon_s), float(bucket_s)
        self._lock = threading.Lock()
        # [bucket start (wall clock s), max score, frames]; at most horizon/bucket (+1) entries.
        self._trace: deque[list[float]] = deque(maxlen=int(math.ceil(horizon_s / bucket_s)) + 1)
        self._alarms: deque[dict[str, Any]] = deque(maxlen=max_alarms)
        self._jpegs: dict[int, bytes] = {}
        self._next_id = 1

    def add_score(self, score: float, now: float | None = None) -> None:
        """One scored frame (non-finite scores are skipped)."""
        if not math.isfinite(score):
            return
        now = time.time() if now is None else now
        start = math.floor(now / self.bucket_s) * self.bucket_s
        with self._lock:
            last = self._trace[-1] if self._trace else None
            if last is not None and last[0] == start:
                last[1] = max(last[1], score)
                last[2] += 1
            else:
                self._trace.append([start, float(score), 1])

    def add_alarm(self, record: dict[str, Any], jpeg: bytes | None = None) -> int:
        """An alarm event (the frame record); ``jpeg``: its overlay (kept for the last few alarms only)."""
        with self._lock:
            alarm_id = self._next_id
            self._next_id += 1
            if len(self._alarms) == self._alarms.maxlen:
                self._jpegs.pop(self._alarms[0]["id"], None)
            entry = {"id": alarm_id, "event": record.get("event"), "time": record.get("time"),
                     "frame": record.get("frame"), "score": record.get("score"),
                     "threshold": record.get("threshold"), "path": record.get("path"),
                     "snapshot": None}
            if jpeg is not None:
                self._jpegs[alarm_id] = bytes(jpeg)
                entry["snapshot"] = f"/alarms/{alarm_id}.jpg"
            self._alarms.append(entry)
            return alarm_id

    def alarm_jpeg(self, alarm_id: int) -> bytes | None:
        with self._lock:
            return self._jpegs.get(alarm_id)

    def trace(self, now: float | None = None) -> dict[str, Any]:
        """{"now", "horizon_s", "bucket_s", "points": [[t, max score, frames], ...]} (oldest first)."""
        now = time.time() if now is None else now
        with self._lock:
            points = [[round(t, 3), s, int(n)] for t, s, n in self._trace if t >= now - self.horizon_s]
        return {"now": now, "horizon_s": self.horizon_s, "bucket_s": self.bucket_s, "points": points}

    def alarms(self) -> list[dict[str, Any]]:
        """The last alarm events, newest first."""
        with self._lock:
            return [dict(a) for a in reversed(self._alarms)]


PAGE = """<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>dcam-edge live</title>
<style>
:root { color-scheme: dark; --bg: #14171c; --panel: #1d2229; --line: #2c333d; --text: #e6e9ee;
        --dim: #8b95a3; --ok: #2fb36b; --bad: #e5484d; --warn: #e5a03a; --accent: #4aa3ff; }
* { box-sizing: border-box; }
[hidden] { display: none !important; }
body { margin: 0; background: var(--bg); color: var(--text);
       font: 14px/1.4 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif; }
header { display: flex; align-items: center; gap: 16px; padding: 10px 16px; border-bottom: 1px solid var(--line); }
header h1 { font-size: 16px; margin: 0; font-weight: 600; }
#source { color: var(--dim); overflow: hidden; text-overflow: ellipsis; white-space: nowrap; flex: 1; }
.pill { padding: 3px 10px; border-radius: 999px; font-weight: 600; font-size: 13px; background: var(--line); }
.pill.ok { background: var(--ok); color: #04140b; } .pill.bad { background: var(--bad); color: #fff; }
.pill.warn { background: var(--warn); color: #1d1300; }
main { display: grid; grid-template-columns: minmax(0, 3fr) minmax(260px, 2fr); gap: 12px; padding: 12px 16px; }
section { background: var(--panel); border: 1px solid var(--line); border-radius: 8px; padding: 10px 12px;
          min-width: 0; }
h2 { font-size: 12px; text-transform: uppercase; letter-spacing: .06em; color: var(--dim); margin: 0 0 8px;
     font-weight: 600; }
#overlay-box { position: relative; background: #000; border-radius: 4px; min-height: 120px;
               display: flex; align-items: center; justify-content: center; }
#overlay { display: block; max-width: 100%; max-height: 52vh; }
#no-overlay { color: var(--dim); padding: 40px; }
#trace { width: 100%; height: 190px; display: block; }
.kpis { display: grid; grid-template-columns: repeat(3, 1fr); gap: 8px; }
.kpi { background: var(--bg); border-radius: 6px; padding: 6px 8px; }
.kpi b { display: block; font-size: 20px; font-variant-numeric: tabular-nums; }
.kpi span { color: var(--dim); font-size: 12px; }
table { width: 100%; border-collapse: collapse; font-variant-numeric: tabular-nums; }
th, td { text-align: left; padding: 3px 6px; border-bottom: 1px solid var(--line); white-space: nowrap; }
th { color: var(--dim); font-weight: 500; font-size: 12px; }
td.num, th.num { text-align: right; }
.alarms { display: flex; flex-direction: column; gap: 8px; max-height: 60vh; overflow-y: auto; }
.alarm { display: flex; gap: 10px; align-items: center; background: var(--bg); border-radius: 6px; padding: 6px; }
.alarm img { width: 96px; height: 72px; object-fit: cover; border-radius: 4px; background: #000; }
.alarm .ev { font-weight: 600; } .alarm .ev.raise { color: var(--bad); } .alarm .ev.clear { color: var(--ok); }
.dim { color: var(--dim); }
.right { display: flex; flex-direction: column; gap: 12px; min-width: 0; }
.left { display: flex; flex-direction: column; gap: 12px; min-width: 0; }
@media (max-width: 800px) { main { grid-template-columns: 1fr; } }
</style>
</head>
<body>
<header>
  <h1>dcam-edge</h1>
  <span id="source">connecting&hellip;</span>
  <span id="alarm" class="pill">&ndash;</span>
  <span id="health" class="pill">&ndash;</span>
</header>
<main>
  <div class="left">
    <section>
      <h2>Latest heat-map overlay</h2>
      <div id="overlay-box"><img id="overlay" alt="latest overlay" hidden>
        <span id="no-overlay">no overlay yet</span></div>
    </section>
    <section>
      <h2>Score vs threshold (<span id="horizon">5 min</span>)</h2>
      <svg id="trace" viewBox="0 0 800 190" role="img" aria-label="score trace"></svg>
    </section>
  </div>
  <div class="right">
    <section>
      <h2>Runtime</h2>
      <div class="kpis">
        <div class="kpi"><b id="fps">&ndash;</b><span>frames/s</span></div>
        <div class="kpi"><b id="score">&ndash;</b><span>last score</span></div>
        <div class="kpi"><b id="threshold">&ndash;</b><span>threshold</span></div>
        <div class="kpi"><b id="frames">&ndash;</b><span>frames</span></div>
        <div class="kpi"><b id="alarms">&ndash;</b><span>alarms</span></div>
        <div class="kpi"><b id="latency">&ndash;</b><span>latency p50 ms</span></div>
        <div class="kpi"><b id="dropped">&ndash;</b><span>dropped</span></div>
        <div class="kpi"><b id="reconnects">&ndash;</b><span>reconnects</span></div>
        <div class="kpi"><b id="stalls">&ndash;</b><span>stalls</span></div>
      </div>
    </section>
    <section>
      <h2>Alarm outputs</h2>
      <div id="sinks" class="dim">no sinks configured</div>
    </section>
    <section>
      <h2>Last alarms</h2>
      <div id="alarm-list" class="alarms"><span class="dim">none yet</span></div>
    </section>
  </div>
</main>
<script>
"use strict";
const $ = (id) => document.getElementById(id);
const SVGNS = $("trace").namespaceURI;  // the inline <svg>'s namespace (no URL literal in the page)
function fmt(x, digits) {
  if (x === null || x === undefined || !isFinite(x)) return "\\u2013";
  const a = Math.abs(x);
  if (a !== 0 && (a >= 1e5 || a < 1e-3)) return x.toExponential(2);
  return x.toFixed(digits === undefined ? 3 : digits);
}
function setText(id, text) { const el = $(id); if (el.textContent !== text) el.textContent = text; }
function pill(id, text, cls) { const el = $(id); el.textContent = text; el.className = "pill " + cls; }
function el(tag, attrs, text) {
  const e = document.createElement(tag);
  for (const k in attrs || {}) e.setAttribute(k, attrs[k]);
  if (text !== undefined) e.textContent = text;
  return e;
}
function svg(tag, attrs) {
  const e = document.createElementNS(SVGNS, tag);
  for (const k in attrs) e.setAttribute(k, attrs[k]);
  return e;
}
function drawTrace(trace, threshold) {
  const box = $("trace"), H = 190, L = 46, R = 10, T = 8, B = 20;
  const W = Math.max(300, Math.round(box.getBoundingClientRect().width || 800));  // 1 unit = 1 px: crisp text
  box.setAttribute("viewBox", "0 0 " + W + " " + H);
  while (box.firstChild) box.removeChild(box.firstChild);
  const pts = trace.points || [], now = trace.now, t0 = now - trace.horizon_s;
  let ymax = threshold > 0 ? threshold * 1.5 : 1;
  for (const p of pts) ymax = Math.max(ymax, p[1] * 1.05);
  const raw = ymax / 4, mag = Math.pow(10, Math.floor(Math.log10(raw)));
  const step = [1, 2, 2.5, 5, 10].map((f) => f * mag).find((v) => v >= raw);  // "nice" tick spacing
  const nticks = Math.max(1, Math.ceil(ymax / step - 1e-9));
  ymax = nticks * step;
  const x = (t) => L + (W - L - R) * (t - t0) / trace.horizon_s;
  const y = (v) => T + (H - T - B) * (1 - Math.max(0, v) / ymax);
  box.appendChild(svg("rect", {x: L, y: T, width: W - L - R, height: H - T - B, fill: "#14171c"}));
  for (let i = 0; i <= nticks; i++) {
    const v = step * i, yy = y(v);
    box.appendChild(svg("line", {x1: L, x2: W - R, y1: yy, y2: yy, stroke: "#2c333d", "stroke-width": 1}));
    const lab = svg("text", {x: L - 6, y: yy + 4, fill: "#8b95a3", "font-size": 11, "text-anchor": "end"});
    lab.textContent = fmt(v, step < 0.01 ? 4 : (step < 0.1 ? 3 : 2)); box.appendChild(lab);
  }
  for (let m = 0; m <= trace.horizon_s / 60; m++) {
    const xx = x(now - m * 60);
    const lab = svg("text", {x: xx, y: H - 5, fill: "#8b95a3", "font-size": 11,
                             "text-anchor": m === 0 ? "end" : "middle"});
    lab.textContent = m === 0 ? "now" : "-" + m + " min"; box.appendChild(lab);
  }
  if (threshold !== null && isFinite(threshold)) {
    const yt = y(threshold);
    box.appendChild(svg("rect", {x: L, y: T, width: W - L - R, height: Math.max(0, yt - T),
                                 fill: "rgba(229,72,77,0.08)"}));
    box.appendChild(svg("line", {x1: L, x2: W - R, y1: yt, y2: yt, stroke: "#e5484d", "stroke-width": 1.5,
                                 "stroke-dasharray": "6 4"}));
    const lab = svg("text", {x: L + 6, y: yt - 5, fill: "#e5484d", "font-size": 11});
    lab.textContent = "threshold " + fmt(threshold); box.appendChild(lab);
  }
  if (pts.length) {
    let d = "", prev = null;
    for (const p of pts) {
      const gap = prev !== null && p[0] - prev > 3 * trace.bucket_s;   // no frames: break the line
      d += (d === "" || gap ? "M" : "L") + x(p[0]).toFixed(1) + "," + y(p[1]).toFixed(1);
      prev = p[0];
    }
    box.appendChild(svg("path", {d: d, fill: "none", stroke: "#4aa3ff", "stroke-width": 1.6,
                                 "stroke-linejoin": "round", "vector-effect": "non-scaling-stroke"}));
    for (const p of pts) if (threshold !== null && p[1] > threshold)
      box.appendChild(svg("circle", {cx: x(p[0]), cy: y(p[1]), r: 2.2, fill: "#e5484d"}));
  }
}
function drawSinks(sinks) {
  const names = Object.keys(sinks || {});
  const box = $("sinks");
  if (!names.length) { box.className = "dim"; box.textContent = "no sinks configured"; return; }
  const keys = [];
  for (const n of names) for (const k in sinks[n]) if (!keys.includes(k)) keys.push(k);
  const table = el("table"), head = el("tr");
  head.appendChild(el("th", {}, "sink"));
  for (const k of keys) head.appendChild(el("th", {class: "num"}, k));
  table.appendChild(head);
  for (const n of names) {
    const tr = el("tr");
    tr.appendChild(el("td", {}, n));
    for (const k of keys) {
      const v = sinks[n][k];
      tr.appendChild(el("td", {class: "num"}, v === undefined || v === null ? "\\u2013" :
                                               (typeof v === "number" ? String(v) : JSON.stringify(v))));
    }
    table.appendChild(tr);
  }
  box.className = ""; box.replaceChildren(table);
}
let alarmKey = "";
function drawAlarms(alarms) {
  const key = alarms.map((a) => a.id).join(",");
  if (key === alarmKey) return;
  alarmKey = key;
  const box = $("alarm-list");
  if (!alarms.length) { box.replaceChildren(el("span", {class: "dim"}, "none yet")); return; }
  const items = alarms.map((a) => {
    const row = el("div", {class: "alarm"});
    if (a.snapshot) {
      const link = el("a", {href: a.snapshot, target: "_blank"});
      link.appendChild(el("img", {src: a.snapshot, alt: "alarm snapshot"}));
      row.appendChild(link);
    }
    const txt = el("div");
    txt.appendChild(el("div", {class: "ev " + a.event}, a.event === "raise" ? "ALARM" : "cleared"));
    const when = a.time ? new Date(a.time) : null;  // local time of the box's browser
    txt.appendChild(el("div", {}, when && !isNaN(when) ? when.toLocaleString() : (a.time || "")));
    txt.appendChild(el("div", {class: "dim"}, "score " + fmt(a.score) + " / " + fmt(a.threshold) +
                                              "  \\u00b7  frame " + a.frame));
    if (a.path) txt.appendChild(el("div", {class: "dim"}, a.path));
    row.appendChild(txt);
    return row;
  });
  box.replaceChildren(...items);
}
let lastJpeg = null;
window.addEventListener("resize", () => { alarmKey = ""; tick(); });
async function tick() {
  try {
    const r = await fetch("/live.json", {cache: "no-store"});
    const s = await r.json();
    setText("source", (s.source || "") + (s.engine ? "  \\u00b7  " + s.engine : "")
                      + (s.model ? "  \\u00b7  " + s.model : ""));
    const h = s.health || {};
    pill("health", h.status === "ok" ? "frames flowing" : (h.status || "?"),
         h.status === "ok" ? "ok" : (h.status === "starting" ? "warn" : "bad"));
    pill("alarm", s.alarm_active ? "ALARM" : "no alarm", s.alarm_active ? "bad" : "ok");
    setText("fps", fmt(s.fps, 1));
    setText("score", fmt(s.last_score));
    setText("threshold", fmt(s.threshold));
    setText("frames", String(s.frames ?? "\\u2013"));
    setText("alarms", String(s.alarms ?? "\\u2013"));
    setText("latency", fmt((s.latency_ms || {}).p50, 1));
    setText("dropped", String(s.dropped ?? "\\u2013"));
    setText("reconnects", String(s.reconnects ?? "\\u2013"));
    setText("stalls", String(s.stalls ?? "\\u2013"));
    setText("horizon", Math.round(s.trace.horizon_s / 60) + " min");
    drawTrace(s.trace, s.threshold);
    drawSinks(s.sinks);
    drawAlarms(s.recent_alarms || []);
    if (s.latest_jpeg_time && s.latest_jpeg_time !== lastJpeg) {
      lastJpeg = s.latest_jpeg_time;
      const img = $("overlay");
      img.src = "/latest.jpg?t=" + encodeURIComponent(lastJpeg);
      img.hidden = false; $("no-overlay").hidden = true;
    }
  } catch (e) {
    pill("health", "endpoint unreachable", "bad");
  }
}
tick();
setInterval(tick, 1000);
</script>
</body>
</html>
"""
