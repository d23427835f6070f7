// squeal dashboard: live numbers on the overview (server-sent events) and confirmations.
// Everything the queue's users wrote (topic names) goes into the page as text, never as HTML.
"use strict";

function sparkPoints(series) {
  if (!series.length) return "";
  const most = Math.max(1, ...series);
  const step = series.length > 1 ? 120 / (series.length - 1) : 0;
  return series.map((v, i) => (i * step).toFixed(1) + "," + (23 - (v / most) * 22).toFixed(1)).join(" ");
}

function age(seconds) {
  if (seconds === null || seconds === undefined) return "–";
  if (seconds < 120) return seconds.toFixed(1) + " s";
  if (seconds < 7200) return (seconds / 60).toFixed(0) + " min";
  return (seconds / 3600).toFixed(1) + " h";
}

function spark(series, cls) {
  const ns = "http://www.w3.org/2000/svg";
  const svg = document.createElementNS(ns, "svg");
  svg.setAttribute("class", cls || "spark");
  svg.setAttribute("viewBox", "0 0 120 24");
  svg.setAttribute("preserveAspectRatio", "none");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", sparkPoints(series));
  svg.appendChild(line);
  return svg;
}

function row(base, topic) {
  const tr = document.createElement("tr");
  tr.dataset.topic = topic;
  const name = document.createElement("td");
  const link = document.createElement("a");
  link.href = base + "/topic?" + new URLSearchParams({ name: topic }).toString();
  link.textContent = topic;
  name.appendChild(link);
  tr.appendChild(name);
  for (const field of ["ready", "delayed", "leased", "dead", "oldest"]) {
    const td = document.createElement("td");
    td.className = "n";
    td.dataset.field = field;
    tr.appendChild(td);
  }
  const sparkCell = document.createElement("td");
  sparkCell.appendChild(spark([]));
  tr.appendChild(sparkCell);
  const paused = document.createElement("td");
  paused.dataset.field = "paused";
  tr.appendChild(paused);
  return tr;
}

function update(base, data) {
  const body = document.querySelector("#topics tbody");
  if (!body || data.error) return;
  const seen = new Set();
  for (const [topic, t] of Object.entries(data.topics)) {
    seen.add(topic);
    let tr = [...body.rows].find((r) => r.dataset.topic === topic);
    if (!tr) {
      tr = row(base, topic);
      body.appendChild(tr);
    }
    for (const field of ["ready", "delayed", "leased", "dead"]) {
      const td = tr.querySelector(`[data-field="${field}"]`);
      td.textContent = String(t[field]);
      if (t.estimated) {
        const bound = document.createElement("span");
        bound.className = "bound";
        bound.title = "at least: the topic holds more than the count limit in some state";
        bound.textContent = "+";
        td.appendChild(bound);
      }
    }
    tr.querySelector('[data-field="oldest"]').textContent = age(t.oldest);
    tr.querySelector("polyline").setAttribute("points", sparkPoints(t.series));
    const paused = tr.querySelector('[data-field="paused"]');
    paused.textContent = "";
    if (t.paused) {
      const badge = document.createElement("span");
      badge.className = "badge";
      badge.textContent = "paused";
      paused.appendChild(badge);
    }
  }
  for (const tr of [...body.rows]) {
    if (tr.dataset.topic !== undefined && !seen.has(tr.dataset.topic)) tr.remove();
    else if (tr.classList.contains("empty") && seen.size) tr.remove();
  }
  const set = (id, text) => { const el = document.getElementById(id); if (el) el.textContent = text; };
  set("workers", String(data.workers));
  set("in-flight", String(data.in_flight));
  set("rate", data.rates.length ? data.rates[data.rates.length - 1].toFixed(1) : "–");
  set("count-limit", String(data.limit));
  const note = document.getElementById("estimated-note");
  if (note) note.hidden = !Object.values(data.topics).some((t) => t.estimated);
  const wide = document.querySelector(".summary polyline");
  if (wide) wide.setAttribute("points", sparkPoints(data.rates));
}

document.addEventListener("DOMContentLoaded", () => {
  const base = document.body.dataset.base;
  for (const form of document.querySelectorAll("form[data-confirm]")) {
    form.addEventListener("submit", (event) => {
      if (!window.confirm(form.dataset.confirm)) event.preventDefault();
    });
  }
  const live = document.getElementById("live");
  if (!live || !window.EventSource) return;
  const events = new EventSource(base + "/events");
  events.onopen = () => { live.className = "live on"; live.textContent = "live"; };
  events.onerror = () => { live.className = "live off"; live.textContent = "reconnecting"; };
  events.onmessage = (message) => {
    const data = JSON.parse(message.data);
    live.dataset.updates = String(Number(live.dataset.updates || 0) + 1);
    update(base, data);
  };
});
