// rtnstream dashboard: the project's own small script (no library). Reads the JSON API of the service that
// served it once a second; draws the charts as SVG; the stop / start buttons appear once a token is entered
// and send it as a bearer header.
"use strict";

const POLL_MS = 1000;
const HISTORY_S = 300;
const COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#17becf", "#8c564b", "#e377c2"];
const TOKEN_KEY = "rtnstream-token";
const history = new Map();   // job id -> [{t, fps, p50, p99}]
const cubes = new Map();     // cube id -> summary (or null while it is fetched)
const colorOf = new Map();   // job id -> colour

function el(tag, attrs = {}, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k === "class") node.className = v; else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function svgEl(tag, attrs = {}) {
  const node = document.createElementNS("http://www.w3.org/2000/svg", tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  return node;
}

function token() { return sessionStorage.getItem(TOKEN_KEY) || ""; }

function say(text) { document.getElementById("message").textContent = text; }

function fmt(v, digits = 1) { return v === null || v === undefined ? "-" : Number(v).toFixed(digits); }

async function getJSON(url) {
  const r = await fetch(url, {cache: "no-store"});
  return {status: r.status, body: await r.json()};
}

async function send(method, url, body) {
  const headers = {Authorization: `Bearer ${token()}`};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(url, {method, headers, body: body === undefined ? undefined : JSON.stringify(body)});
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(answer.error ? `${answer.error.code}: ${answer.error.message}` : `HTTP ${r.status}`);
  return answer;
}

async function stopJob(id) {
  say(`stopping job ${id} ...`);
  try { await send("POST", `v1/jobs/${id}/stop`); say(`job ${id} stopped`); } catch (e) { say(`stop ${id}: ${e.message}`); }
}

async function startJob(job) {
  try {
    const created = await send("POST", "v1/jobs", job.config);
    say(`job ${created.id} started (the configuration of ${job.id})`);
  } catch (e) { say(`start: ${e.message}`); }
}

function color(id) {
  if (!colorOf.has(id)) colorOf.set(id, COLORS[colorOf.size % COLORS.length]);
  return colorOf.get(id);
}

function remember(job, now) {
  if (!job.live) return;
  const points = history.get(job.id) || [];
  points.push({t: now, fps: job.throughput.fps || 0, p50: job.latency_ms.p50, p99: job.latency_ms.p99});
  while (points.length && points[0].t < now - HISTORY_S) points.shift();
  history.set(job.id, points);
}

function rejected(counters) {
  const r = counters.rejected || {};
  const total = Object.values(r).reduce((a, b) => a + b, 0);
  const reasons = Object.entries(r).map(([k, v]) => `${k} ${v}`).join(", ");
  return total ? `${total} (${reasons})` : "0";
}

function jobRow(job) {
  const c = job.counters || {};
  const cells = [
    job.id, job.config.camera, job.state, job.backend || "-", job.device || "-", fmt(job.throughput.fps),
    fmt(job.latency_ms.p50), fmt(job.latency_ms.p99), job.queue_depth ?? "-", c.frames_in ?? 0, c.frames_out ?? 0,
    c.in_flight ?? 0, rejected(c), c.dropped ?? 0, c.passthrough ?? 0, c.abandoned ?? 0, c.corrections_low ?? 0,
    c.corrections_high ?? 0, c.vetoed ?? 0,
  ];
  const names = ["id", "camera", "state", "backend", "device", "fps", "p50", "p99", "queue", "in", "out",
                 "in-flight", "rejected", "dropped", "passthrough", "abandoned", "low", "high", "vetoed"];
  const row = el("tr", {"data-job": job.id});
  cells.forEach((v, i) => row.append(el("td", {class: names[i]}, v)));
  row.cells[0].style.color = color(job.id);
  row.cells[2].className += ` state-${job.state}`;
  const actions = el("td", {class: "actions"});
  if (token()) {
    if (job.live && job.state === "running") {
      const b = el("button", {class: "stop"}, "stop");
      b.onclick = () => stopJob(job.id);
      actions.append(b);
    } else if (!job.live && ["stopped", "failed", "interrupted"].includes(job.state)) {
      const b = el("button", {class: "start"}, "start again");
      b.onclick = () => startJob(job);
      actions.append(b);
    }
  }
  row.append(actions);
  return row;
}

function drawChart(svg, series, yLabel) {
  // series: [{color, points: [[t, v], ...]}]; x: the last HISTORY_S seconds
  const W = 600, H = 180, L = 44, R = 8, T = 8, B = 22;
  const now = Date.now() / 1000;
  const values = series.flatMap(s => s.points.map(p => p[1]));
  const top = Math.max(1e-9, ...values) * 1.1;
  svg.replaceChildren();
  svg.append(svgEl("line", {class: "axis", x1: L, y1: H - B, x2: W - R, y2: H - B}));
  svg.append(svgEl("line", {class: "axis", x1: L, y1: T, x2: L, y2: H - B}));
  const label = (x, y, text, anchor) => {
    const t = svgEl("text", {x, y, "text-anchor": anchor});
    t.textContent = text;
    svg.append(t);
  };
  label(L - 4, T + 10, values.length ? top.toPrecision(3) : "-", "end");
  label(L - 4, H - B, "0", "end");
  label(L, H - 6, `-${HISTORY_S / 60} min`, "start");
  label(W - R, H - 6, "now", "end");
  label((L + W) / 2, H - 6, yLabel, "middle");
  for (const s of series) {
    const pts = s.points.map(([t, v]) => {
      const x = L + (W - L - R) * (1 - (now - t) / HISTORY_S);
      const y = H - B - (H - B - T) * (v / top);
      return `${x.toFixed(1)},${y.toFixed(1)}`;
    });
    if (pts.length) {
      svg.append(svgEl("polyline", {points: pts.join(" "), fill: "none", stroke: s.color,
                                    "stroke-width": 2, "stroke-dasharray": s.dash || ""}));
    }
  }
}

function drawCharts() {
  const fps = [], latency = [];
  for (const [id, points] of history) {
    fps.push({color: color(id), points: points.map(p => [p.t, p.fps])});
    latency.push({color: color(id), points: points.filter(p => p.p50 !== null).map(p => [p.t, p.p50])});
    latency.push({color: color(id), dash: "5 3",
                  points: points.filter(p => p.p99 !== null).map(p => [p.t, p.p99])});
  }
  drawChart(document.getElementById("chart-fps"), fps, "frames/s");
  drawChart(document.getElementById("chart-latency"), latency, "ms (solid p50, dashed p99)");
}

function refreshImage(img, url, version) {
  // a new picture only when it changed and the previous one has finished loading
  if (img.dataset.version === String(version) || (img.dataset.loading === "1")) return;
  img.dataset.loading = "1";
  img.onload = img.onerror = () => { img.dataset.loading = "0"; };
  img.dataset.version = String(version);
  img.src = url;
}

function picture(view, kind, caption) {
  let fig = view.querySelector(`figure.${kind}`);
  if (!fig) {
    fig = el("figure", {class: kind}, el("img", {class: kind, alt: caption}), el("figcaption", {}, caption));
    view.querySelector(".pictures").append(fig);
  }
  return fig.querySelector("img");
}

function updateView(job) {
  const views = document.getElementById("views");
  let view = views.querySelector(`.view[data-job="${job.id}"]`);
  if (!view) {
    view = el("div", {class: "view", "data-job": job.id}, el("h3"), el("div", {class: "pictures"}));
    views.append(view);
  }
  const c = job.counters || {};
  const last = (job.series || []).filter(s => s.bias_offset).at(-1);
  view.querySelector("h3").textContent = `${job.config.camera} (job ${job.id}): ${job.state}` +
    (last ? `; last finished series ${last.series} (#${last.index}, ${last.frames} frames)` : "");
  if (job.live && job.state === "running" && c.frames_out > 0) {  // not while stopping: it may be gone next
    refreshImage(picture(view, "preview", "latest corrected frame"),
                 `v1/jobs/${job.id}/preview.png?max_side=512&v=${c.frames_out}`, c.frames_out);
    const corrections = c.corrections_low + c.corrections_high;
    refreshImage(picture(view, "corrections", "corrections in the current series"),
                 `v1/jobs/${job.id}/corrections.png?max_side=512&v=${c.series_started}-${corrections}`,
                 `${c.series_started}-${corrections}`);
  }
  if (last) {
    const q = `series=${encodeURIComponent(last.series)}&index=${last.index}`;
    refreshImage(picture(view, "bias-offset", `bias offset map, series ${last.series} (blue < 0 < red)`),
                 `v1/jobs/${job.id}/bias-offset.png?${q}&max_side=512`, `${last.series}-${last.index}`);
  }
}

async function updateCubes(jobs) {
  const users = new Map();
  for (const j of jobs) users.set(j.config.cube_id, [...(users.get(j.config.cube_id) || []), j.id]);
  for (const id of users.keys()) {
    if (!cubes.has(id)) {
      cubes.set(id, null);
      getJSON(`v1/cubes/${id}`).then(r => { if (r.status === 200) cubes.set(id, r.body); else cubes.delete(id); })
                              .catch(() => cubes.delete(id));
    }
  }
  const body = document.querySelector("#cubes tbody");
  body.replaceChildren(...[...users].filter(([id]) => cubes.get(id)).map(([id, ids]) => {
    const cube = cubes.get(id);
    return el("tr", {"data-cube": id}, el("td", {}, id), el("td", {}, cube.shape.join(" x ")),
              el("td", {}, cube.n_rtn), el("td", {}, fmt(cube.gain_e_per_adu, 4)), el("td", {}, ids.join(", ")));
  }));
}

async function poll() {
  try {
    const [jobs, ready] = await Promise.all([getJSON("v1/jobs?limit=1000"), getJSON("readyz")]);
    const now = Date.now() / 1000;
    const redis = document.getElementById("redis");
    redis.textContent = ready.body.redis ? "Redis up" : `Redis away (${ready.body.pending_writes} writes waiting)`;
    redis.className = `pill ${ready.body.redis ? "up" : "down"}`;
    if (jobs.status === 200) {
      const list = jobs.body.jobs;
      list.forEach(j => remember(j, now));
      document.querySelector("#jobs tbody").replaceChildren(...list.map(jobRow));
      const listed = new Set(list.map(j => j.id));
      document.querySelectorAll("#views .view").forEach(v => { if (!listed.has(v.dataset.job)) v.remove(); });
      for (const id of history.keys()) if (!listed.has(id)) history.delete(id);
      list.forEach(updateView);
      updateCubes(list);
      drawCharts();
    } else {
      say(`jobs: ${jobs.body.error ? jobs.body.error.message : jobs.status}`);
    }
    document.getElementById("updated").textContent = `updated ${new Date().toLocaleTimeString()}`;
  } catch (e) {
    say(`the service does not answer: ${e.message}`);
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

document.getElementById("token-form").addEventListener("submit", ev => {
  ev.preventDefault();
  const value = document.getElementById("token").value.trim();
  if (value) sessionStorage.setItem(TOKEN_KEY, value);
  document.getElementById("token").value = "";
  say(value ? "token set: stop / start buttons shown" : "");
});
document.getElementById("forget").addEventListener("click", () => {
  sessionStorage.removeItem(TOKEN_KEY);
  say("token forgotten: read-only");
});
poll();
