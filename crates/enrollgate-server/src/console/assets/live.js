// Live view: the daemon's own counters, polled every second, kept for five minutes in
// memory, drawn as small SVG line charts (no library).
import { h, json, sayError } from './api.js';

const SVG = 'http://www.w3.org/2000/svg';
const KEEP_MS = 5 * 60 * 1000;
const COLORS = ['#1f5f8b', '#1a7f37', '#bc4c00', '#8250df', '#cf222e', '#9a6700', '#0a7d8c', '#57606a'];
let samples = [];
let timer = null;
let root = null;

export function show(el) {
  root = el;
  el.replaceChildren(
    h('h1', { id: 'live-title' }, 'Live'),
    h('p', { class: 'muted', id: 'live-note' }, 'The gateway\'s own metrics, sampled every second; the last five minutes stay in this page only.'),
    h('div', { class: 'charts' },
      chart('enrollments', 'Enrollments per second, by method'),
      chart('refusals', 'Refusals per second, by error code'),
      chart('queues', 'Queue depths'),
      chart('connections', 'Open connections')),
    h('div', { class: 'card', style: 'margin-top:1rem' }, h('h2', {}, 'Now'), h('table', { class: 'now', 'aria-label': 'Current values' }, h('tbody', { id: 'live-now' }))));
  poll();
  timer = setInterval(poll, 1000);
}

export function hide() {
  clearInterval(timer);
  timer = null;
  root = null;
  samples = [];
}

function chart(id, title) {
  const svg = document.createElementNS(SVG, 'svg');
  svg.setAttribute('class', 'chart');
  svg.setAttribute('id', `chart-${id}`);
  svg.setAttribute('role', 'img');
  svg.setAttribute('aria-label', title);
  svg.setAttribute('viewBox', '0 0 400 150');
  svg.setAttribute('preserveAspectRatio', 'none');
  return h('figure', { class: 'card' }, h('figcaption', {}, title), svg, h('div', { class: 'legend', id: `legend-${id}` }));
}

async function poll() {
  try {
    const s = (await json('GET', '/console/live')).data;
    if (!root) return;
    if (!s.available) { root.querySelector('#live-note').textContent = 'This gateway runs without its metrics recorder (metrics.listen is unset): nothing to show.'; return; }
    samples.push(s);
    while (samples.length && samples[0].atMillis < s.atMillis - KEEP_MS) samples.shift();
    draw();
  } catch (e) { sayError(e); }
}

// Per-second rates of counter `pick(sample)[key]` between consecutive samples.
function rates(pick) {
  const keys = new Set();
  for (const s of samples) for (const k of Object.keys(pick(s))) keys.add(k);
  const series = {};
  for (const k of keys) {
    series[k] = [];
    for (let i = 1; i < samples.length; i++) {
      const dt = (samples[i].atMillis - samples[i - 1].atMillis) / 1000;
      const dv = (pick(samples[i])[k] || 0) - (pick(samples[i - 1])[k] || 0);
      series[k].push([samples[i].atMillis, dt > 0 && dv >= 0 ? dv / dt : 0]);
    }
  }
  return series;
}

function gauges(picks) {
  const series = {};
  for (const [k, pick] of Object.entries(picks)) series[k] = samples.map((s) => [s.atMillis, pick(s)]);
  return series;
}

function draw() {
  plot('enrollments', rates((s) => s.enrollments), '/s');
  plot('refusals', rates((s) => s.refusals), '/s');
  plot('queues', gauges({ commit: (s) => s.commitQueueDepth, sign: (s) => s.signQueueDepth }), '');
  plot('connections', gauges({ open: (s) => s.openConnections }), '');
  const last = samples[samples.length - 1];
  const total = (o) => Object.values(o).reduce((a, b) => a + b, 0);
  root.querySelector('#live-now').replaceChildren(
    ...[['Enrollments (since start)', total(last.enrollments)],
      ['Refusals (since start)', total(last.refusals)],
      ['Open connections', last.openConnections],
      ['Commit queue', last.commitQueueDepth],
      ['Signing queue', last.signQueueDepth]].map(([k, v]) => h('tr', {}, h('th', { scope: 'row' }, k), h('td', {}, String(Math.round(v))))));
}

function plot(id, series, unit) {
  const svg = root.querySelector(`#chart-${id}`);
  // The time axis spans what the page has seen, up to five minutes, at least 30 s.
  const now = samples[samples.length - 1].atMillis;
  const span = Math.min(KEEP_MS, Math.max(30000, now - samples[0].atMillis));
  const t0 = now - span;
  let max = 1;
  for (const pts of Object.values(series)) for (const [, v] of pts) max = Math.max(max, v);
  const x = (t) => ((t - t0) / span) * 400;
  const y = (v) => 140 - (v / max) * 125;
  const nodes = [];
  for (const f of [0.5, 1]) {
    const line = document.createElementNS(SVG, 'line');
    line.setAttribute('x1', '0'); line.setAttribute('x2', '400');
    line.setAttribute('y1', String(y(max * f))); line.setAttribute('y2', String(y(max * f)));
    line.setAttribute('stroke', '#eaeef2');
    nodes.push(line);
  }
  const label = document.createElementNS(SVG, 'text');
  label.setAttribute('x', '4'); label.setAttribute('y', '12'); label.setAttribute('font-size', '10'); label.setAttribute('fill', '#57606a');
  label.textContent = `max ${max < 10 ? max.toFixed(1) : Math.round(max)}${unit}`;
  nodes.push(label);
  const ago = document.createElementNS(SVG, 'text');
  ago.setAttribute('x', '4'); ago.setAttribute('y', '148'); ago.setAttribute('font-size', '9'); ago.setAttribute('fill', '#57606a');
  ago.textContent = `${Math.round(span / 1000)} s ago`;
  nodes.push(ago);
  const legend = [];
  Object.entries(series).forEach(([name, pts], i) => {
    const color = COLORS[i % COLORS.length];
    if (pts.length) {
      const pl = document.createElementNS(SVG, 'polyline');
      pl.setAttribute('points', pts.map(([t, v]) => `${x(t).toFixed(1)},${y(v).toFixed(1)}`).join(' '));
      pl.setAttribute('fill', 'none'); pl.setAttribute('stroke', color); pl.setAttribute('stroke-width', '1.6');
      pl.setAttribute('vector-effect', 'non-scaling-stroke');
      nodes.push(pl);
    }
    const v = pts.length ? pts[pts.length - 1][1] : 0;
    legend.push(h('span', { style: `--c:${color}` }, `${name} ${v < 10 ? v.toFixed(1) : Math.round(v)}${unit}`));
  });
  svg.replaceChildren(...nodes);
  root.querySelector(`#legend-${id}`).replaceChildren(...(legend.length ? legend : [h('span', { class: 'muted' }, 'none yet')]));
}
