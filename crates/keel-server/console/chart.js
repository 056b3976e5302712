// Small SVG charts drawn from the server's own per-minute windows (no external Prometheus).
const SVG = 'http://www.w3.org/2000/svg';

function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs || {})) if (v !== null && v !== undefined) el.setAttribute(k, v);
  for (const c of children) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return el;
}

/** A rounded "nice" upper bound for an axis. */
function niceMax(v) {
  if (!(v > 0)) return 1;
  const p = Math.pow(10, Math.floor(Math.log10(v)));
  for (const m of [1, 2, 2.5, 5, 10]) if (v <= m * p) return m * p;
  return 10 * p;
}

/**
 * K.chart({title, points: [{at, …}], series: [{key, label, cls}], format}): a line chart of
 * the series over the points' minutes, with a y axis, the first and last times, a legend,
 * and each point's values in its tooltip.
 */
K.chart = function ({ title, points, series, format = K.fmt.num, height = 140 }) {
  const width = 560, left = 48, right = 8, top = 10, bottom = 22;
  const w = width - left - right, hgt = height - top - bottom;
  const values = points.flatMap((p) => series.map((x) => p[x.key]).filter((v) => typeof v === 'number'));
  const max = niceMax(Math.max(0, ...values));
  const n = Math.max(points.length - 1, 1);
  const xAt = (i) => left + (i / n) * w;
  const yAt = (v) => top + hgt - (v / max) * hgt;
  const svg = s('svg', { viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img', 'aria-label': title });
  for (const f of [0, 0.5, 1]) {
    const y = yAt(max * f);
    svg.append(s('line', { x1: left, x2: width - right, y1: y, y2: y, class: 'grid' }));
    svg.append(s('text', { x: left - 6, y: y + 4, 'text-anchor': 'end', class: 'axis' }, format(max * f)));
  }
  if (points.length) {
    const label = (p) => new Date(p.at).toISOString().slice(11, 16);
    svg.append(s('text', { x: left, y: height - 6, class: 'axis' }, label(points[0])));
    svg.append(s('text', { x: width - right, y: height - 6, 'text-anchor': 'end', class: 'axis' }, label(points[points.length - 1])));
  }
  for (const x of series) {
    const d = points
      .map((p, i) => (typeof p[x.key] === 'number' ? `${xAt(i).toFixed(1)},${yAt(p[x.key]).toFixed(1)}` : null))
      .filter(Boolean);
    if (d.length) svg.append(s('polyline', { points: d.join(' '), class: `line ${x.cls || ''}` }));
  }
  // One invisible column per minute, with its values as the tooltip.
  points.forEach((p, i) => {
    const tip = `${new Date(p.at).toISOString().slice(11, 16)} — ` + series.map((x) => `${x.label} ${format(p[x.key])}`).join(', ');
    svg.append(s('rect', { x: xAt(i) - w / n / 2, y: top, width: w / n, height: hgt, class: 'hover' }, s('title', {}, tip)));
  });
  const legend = K.h('div.legend', series.map((x) => K.h('span', K.h(`i.swatch.${x.cls || ''}`), x.label)));
  return K.h('figure.chart-box', K.h('figcaption', title), svg, legend);
};

/** A horizontal bar showing a fraction (0–1). */
K.meter = function (fraction, label) {
  const bar = K.h('span.fill');
  const f = Math.max(0, Math.min(1, fraction || 0));
  bar.style.width = `${(f * 100).toFixed(1)}%`;
  const el = K.h('span.meter', { role: 'progressbar', 'aria-valuemin': 0, 'aria-valuemax': 100, 'aria-valuenow': Math.round(f * 100), 'aria-label': label || 'progress' }, bar);
  if (f > 0.9) el.classList.add('high');
  return el;
};
