// pages/usage.js: usage and cost over a period: totals, a stacked bar chart per model
// (or key) over time, drawn as SVG here, and the table behind it.

import { api, getToken, query, ApiError } from '../api.js';
import {
  h, s, fill, pageError, emptyState, debounce,
  fmtInt, fmtCompact, fmtCost, fmtMs, fmtNum, isNum,
} from '../ui.js';

const PERIODS = [
  { since: '1h', label: 'Last hour', bucket: 'minute', step: 60 },
  { since: '6h', label: 'Last 6 hours', bucket: 'minute', step: 60 },
  { since: '24h', label: 'Last 24 hours', bucket: 'hour', step: 3600 },
  { since: '7d', label: 'Last 7 days', bucket: 'hour', step: 3600 },
  { since: '30d', label: 'Last 30 days', bucket: 'day', step: 86400 },
];
const METRICS = {
  tokens: { label: 'Tokens', of: (g) => (g.tokens_in || 0) + (g.tokens_out || 0) },
  tokens_out: { label: 'Tokens out', of: (g) => g.tokens_out || 0 },
  cost: { label: 'Cost', of: (g) => (isNum(g.cost) ? g.cost : 0) },
  requests: { label: 'Requests', of: (g) => g.requests || 0 },
};
const MAX_SERIES = 8;

const state = { since: '24h', group: 'model', metric: 'tokens' };

export function mount(root, { store }) {
  const since = h('select', { class: 'input input-sm', tid: 'usage-since', 'aria-label': 'Period' },
    PERIODS.map((p) => h('option', { value: p.since, selected: p.since === state.since }, p.label)));
  const group = h('select', { class: 'input input-sm', tid: 'usage-group', 'aria-label': 'Group by' },
    [['model', 'By model'], ['key', 'By key']].map(([v, t]) => h('option', { value: v, selected: v === state.group }, t)));
  const metric = h('select', { class: 'input input-sm', tid: 'usage-metric', 'aria-label': 'Chart' },
    Object.entries(METRICS).map(([v, m]) => h('option', { value: v, selected: v === state.metric }, m.label)));
  const tiles = h('section', { class: 'tiles', tid: 'usage-totals', 'aria-label': 'Totals' });
  const errorBox = h('div');
  const chartBox = h('div', { class: 'chart-box' });
  const legendBox = h('div', { class: 'chart-legend' });
  const tableBox = h('div', { class: 'table-scroll' });
  const note = h('p', { class: 'muted small chart-note' }, '\u00a0');
  const chartTitle = h('h2', { class: 'section-title' }, '\u00a0');
  let alive = true;

  root.append(
    h('header', { class: 'page-head' },
      h('div', {},
        h('h1', { class: 'page-title' }, 'Usage & cost'),
        h('p', { class: 'page-sub' }, 'Requests, tokens and cost, each request counted once, where it was served. Cloud models are priced from the price table; local ones by the energy they used.')),
      h('div', { class: 'toolbar' },
        h('label', { class: 'inline-field' }, h('span', { class: 'muted small' }, 'Period'), since),
        h('label', { class: 'inline-field' }, h('span', { class: 'muted small' }, 'Group'), group),
        h('label', { class: 'inline-field' }, h('span', { class: 'muted small' }, 'Chart'), metric))),
    errorBox,
    tiles,
    h('section', { class: 'card chart-card' },
      h('div', { class: 'card-head' }, chartTitle, note),
      chartBox, legendBox),
    h('section', { class: 'card table-card' }, tableBox),
  );
  drawTiles(tiles, null);
  const content = [tiles, chartBox.parentElement, tableBox.parentElement];

  let buckets = null; // the bucketed answer (chart)
  let totals = null; // the answer without buckets (table)

  const draw = () => {
    if (!alive) return;
    const period = PERIODS.find((p) => p.since === state.since) || PERIODS[2];
    chartTitle.textContent = `${METRICS[state.metric].label} per ${period.bucket}, by ${state.group}`;
    drawTiles(tiles, totals);
    drawChart(chartBox, legendBox, buckets, period, state);
    drawTable(tableBox, totals, state.group);
    const missing = Object.keys({ ...(buckets?.missing || {}), ...(totals?.missing || {}) });
    note.textContent = missing.length ? `${missing.length} node${missing.length === 1 ? '' : 's'} did not answer: not counted` : '\u00a0';
  };

  let seq = 0;
  const load = async () => {
    content.forEach((el) => { el.hidden = !getToken(); });
    if (!getToken()) {
      fill(errorBox, pageError(new ApiError('', 401, 'unauthorized'), 'Usage'));
      buckets = totals = null;
      return;
    }
    const mine = ++seq;
    const period = PERIODS.find((p) => p.since === state.since) || PERIODS[2];
    try {
      const [b, t] = await Promise.all([
        api(`/api/usage${query({ since: period.since, bucket: period.bucket })}`),
        api(`/api/usage${query({ since: period.since })}`),
      ]);
      if (mine !== seq) return;
      buckets = b;
      totals = t;
      fill(errorBox);
    } catch (exc) {
      if (mine !== seq) return;
      fill(errorBox, pageError(exc, 'Usage'));
    }
    draw();
  };

  since.addEventListener('change', () => {
    state.since = since.value;
    load();
  });
  group.addEventListener('change', () => {
    state.group = group.value;
    draw();
  });
  metric.addEventListener('change', () => {
    state.metric = metric.value;
    draw();
  });

  // live: a request recorded here moves the figures (debounced: a burst is one refetch)
  const soon = debounce(load, 2500);
  const offs = [store.subscribe('request', soon)];
  const resize = new ResizeObserver(debounce(() => drawChart(chartBox, legendBox, buckets, PERIODS.find((p) => p.since === state.since), state), 120));
  resize.observe(chartBox);
  const onTheme = () => draw();
  window.addEventListener('themechange', onTheme);
  load();
  return () => {
    alive = false;
    soon.cancel();
    resize.disconnect();
    window.removeEventListener('themechange', onTheme);
    offs.forEach((off) => off());
  };
}

// --- totals ---------------------------------------------------------------------------------

function currencyOf(groups) {
  const set = new Set(groups.filter((g) => isNum(g.cost)).map((g) => g.currency || 'USD'));
  return set.size === 1 ? [...set][0] : set.size ? 'mixed' : 'USD';
}

function tile(label, value, detail) {
  return h('div', { class: 'tile' },
    h('div', { class: 'tile-label' }, label),
    h('div', { class: 'tile-value' }, value),
    h('div', { class: 'tile-detail' }, detail || '\u00a0'));
}

function drawTiles(el, answer) {
  const t = answer?.totals;
  const groups = answer?.usage || [];
  const cur = currencyOf(groups);
  const cost = t && isNum(t.cost) ? (cur === 'mixed' ? `${fmtNum(t.cost, 4)} (mixed)` : fmtCost(t.cost, cur)) : '—';
  const tokens = t ? (t.tokens_in || 0) + (t.tokens_out || 0) : null;
  const sources = new Set(groups.map((g) => g.cost_source).filter(Boolean));
  fill(el,
    tile('Requests', t ? fmtInt(t.requests) : '—', t ? `${fmtInt(t.errors)} error${t.errors === 1 ? '' : 's'}${t.requests ? ` · ${fmtNum((t.errors / t.requests) * 100, 1)}%` : ''}` : ''),
    tile('Tokens', t ? fmtCompact(tokens) : '—', t ? `${fmtCompact(t.tokens_in)} in · ${fmtCompact(t.tokens_out)} out` : ''),
    tile('Cost', cost, t ? (sources.size ? `from ${[...sources].map((x) => (x === 'price_table' ? 'price table' : x)).join(' and ')}` : t.requests ? 'not known' : '') : ''),
    tile('Cost per 1M tokens', t && isNum(t.cost) && tokens ? fmtCost((t.cost / tokens) * 1e6, cur === 'mixed' ? 'USD' : cur) : '—', t ? 'in and out together' : ''),
  );
}

// --- the chart ------------------------------------------------------------------------------------

function groupName(g, by) {
  if (by === 'key') return g.key_id === 'admin-token' ? 'admin token' : g.key_id || 'no key';
  return g.model || '(none)';
}

function niceMax(max) {
  if (!(max > 0)) return { top: 1, step: 0.25 };
  const raw = max / 4;
  const mag = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * mag).find((st) => st >= raw);
  return { top: step * Math.ceil(max / step), step };
}

function bucketLabel(t, step, spanDays) {
  const d = new Date(t * 1000);
  if (step >= 86400) return d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' });
  const time = d.toLocaleTimeString(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' });
  return spanDays > 1 && d.getHours() === 0 && d.getMinutes() === 0
    ? d.toLocaleDateString(undefined, { month: 'short', day: 'numeric' })
    : time;
}

function drawChart(box, legendBox, answer, period, st) {
  const W = Math.max(300, Math.floor(box.clientWidth || 800));
  const H = W < 560 ? 220 : 280;
  const pad = { l: 56, r: 12, t: 12, b: 28 };
  const plotW = W - pad.l - pad.r;
  const plotH = H - pad.t - pad.b;
  const metric = METRICS[st.metric];
  const groups = answer?.usage || [];
  const step = answer?.bucket_s || period.step;
  const now = Date.now() / 1000;
  const first = Math.floor((answer?.since ?? now - 86400) / step) * step;
  const last = Math.floor(now / step) * step;
  const times = [];
  for (let t = first; t <= last; t += step) times.push(t);

  // series: the biggest groups, the rest as "other"
  const totals = new Map();
  for (const g of groups) {
    const name = groupName(g, st.group);
    totals.set(name, (totals.get(name) || 0) + metric.of(g));
  }
  const ranked = [...totals.entries()].sort((a, b) => b[1] - a[1]);
  const named = ranked.slice(0, MAX_SERIES).map(([n]) => n);
  const hasOther = ranked.length > MAX_SERIES;
  const series = hasOther ? [...named, 'other'] : named;
  const index = new Map(times.map((t, i) => [t, i]));
  const values = series.map(() => new Array(times.length).fill(0));
  for (const g of groups) {
    const i = index.get(Math.floor(g.bucket / step) * step);
    if (i === undefined) continue;
    let si = named.indexOf(groupName(g, st.group));
    if (si < 0) si = series.length - 1;
    values[si][i] += metric.of(g);
  }
  const stackTop = times.map((_, i) => values.reduce((acc, v) => acc + v[i], 0));
  const { top, step: yStep } = niceMax(Math.max(0, ...stackTop));
  const cur = currencyOf(groups);
  const fmtY = st.metric === 'cost' ? (v) => fmtCost(v, cur === 'mixed' ? 'USD' : cur) : (v) => fmtCompact(v);
  const y = (v) => pad.t + plotH - (v / top) * plotH;
  const slot = plotW / Math.max(times.length, 1);
  const barW = Math.max(1, Math.min(28, slot * 0.72));

  const svg = s('svg', {
    class: 'chart', tid: 'usage-chart', viewBox: `0 0 ${W} ${H}`, width: W, height: H,
    role: 'img', tabindex: '0', 'aria-label': `${metric.label} per ${period.bucket}, stacked by ${st.group}. Arrow keys read each ${period.bucket}.`,
  });
  const grid = s('g', { class: 'chart-grid' });
  for (let v = 0; v <= top + 1e-12; v += yStep) {
    grid.append(
      s('line', { x1: pad.l, x2: W - pad.r, y1: y(v), y2: y(v), class: v === 0 ? 'axis' : '' }),
      s('text', { x: pad.l - 8, y: y(v) + 4, 'text-anchor': 'end', class: 'chart-tick' }, fmtY(v)),
    );
  }
  svg.append(grid);
  const spanDays = (last - first) / 86400;
  const labelEvery = Math.max(1, Math.ceil(times.length / Math.max(2, Math.floor(plotW / 90))));
  const xAxis = s('g', { class: 'chart-x' });
  times.forEach((t, i) => {
    if ((times.length - 1 - i) % labelEvery !== 0) return;
    const x = pad.l + slot * i + slot / 2;
    const text = bucketLabel(t, step, spanDays);
    const half = text.length * 3.3; // about half its width at 11px
    const anchor = x + half > W - 2 ? 'end' : x - half < pad.l - 20 ? 'start' : 'middle';
    const ax = anchor === 'end' ? Math.min(W - 2, x + slot / 2) : anchor === 'start' ? Math.max(2, x - slot / 2) : x;
    xAxis.append(s('text', { x: ax, y: H - 8, 'text-anchor': anchor, class: 'chart-tick' }, text));
  });
  svg.append(xAxis);

  const bars = s('g', { class: 'chart-bars' });
  times.forEach((t, i) => {
    let base = 0;
    const x = pad.l + slot * i + (slot - barW) / 2;
    series.forEach((name, si) => {
      const v = values[si][i];
      if (!(v > 0)) return;
      const y0 = y(base);
      const y1 = y(base + v);
      bars.append(s('rect', { x: x.toFixed(2), y: y1.toFixed(2), width: barW.toFixed(2), height: Math.max(0.5, y0 - y1).toFixed(2), class: `series series-${name === 'other' ? 'other' : si}`, rx: barW > 6 ? 2 : 0 }));
      base += v;
    });
  });
  svg.append(bars);
  const cursor = s('rect', { class: 'chart-cursor', x: 0, y: pad.t, width: slot, height: plotH, visibility: 'hidden' });
  svg.insertBefore(cursor, bars);
  if (!groups.length) {
    svg.append(s('text', { x: pad.l + plotW / 2, y: pad.t + plotH / 2, 'text-anchor': 'middle', class: 'chart-empty' }, answer ? 'No requests in this period' : ''));
  }

  // tooltip: pointer or arrow keys pick a bucket
  const tip = h('div', { class: 'chart-tip', hidden: true, role: 'status' });
  const show = (i) => {
    if (i < 0 || i >= times.length) return;
    cursor.setAttribute('x', String(pad.l + slot * i));
    cursor.setAttribute('visibility', 'visible');
    const rows = series.map((name, si) => [name, si, values[si][i]]).filter((r) => r[2] > 0).reverse();
    fill(tip,
      h('div', { class: 'chart-tip-title' }, new Date(times[i] * 1000).toLocaleString(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit', hourCycle: 'h23' })),
      rows.length
        ? rows.map(([name, si, v]) => h('div', { class: 'chart-tip-row' }, h('span', { class: ['swatch', `series-${name === 'other' ? 'other' : si}`] }), h('span', { class: 'chart-tip-name' }, name), h('span', { class: 'chart-tip-val' }, fmtY(v))))
        : h('div', { class: 'muted small' }, 'nothing'),
      rows.length > 1 ? h('div', { class: 'chart-tip-row total' }, h('span'), h('span', { class: 'chart-tip-name' }, 'total'), h('span', { class: 'chart-tip-val' }, fmtY(stackTop[i]))) : null);
    tip.hidden = false;
    const left = pad.l + slot * i + slot / 2;
    tip.classList.toggle('flip', left > W * 0.6);
    tip.style.setProperty('--x', `${left}px`);
    svg.dataset.cursor = String(i);
  };
  const hide = () => {
    tip.hidden = true;
    cursor.setAttribute('visibility', 'hidden');
    delete svg.dataset.cursor;
  };
  svg.addEventListener('pointermove', (e) => {
    const rect = svg.getBoundingClientRect();
    const px = ((e.clientX - rect.left) / rect.width) * W;
    const i = Math.floor((px - pad.l) / slot);
    if (i >= 0 && i < times.length) show(i);
    else hide();
  });
  svg.addEventListener('pointerleave', hide);
  svg.addEventListener('blur', hide);
  svg.addEventListener('keydown', (e) => {
    const at = svg.dataset.cursor === undefined ? times.length : Number(svg.dataset.cursor);
    if (e.key === 'ArrowLeft') show(Math.max(0, at - 1));
    else if (e.key === 'ArrowRight') show(Math.min(times.length - 1, at + 1));
    else if (e.key === 'Escape') hide();
    else return;
    e.preventDefault();
  });
  fill(box, svg, tip);

  fill(legendBox, series.length
    ? series.map((name, si) => h('span', { class: 'legend-item' },
      h('span', { class: ['swatch', `series-${name === 'other' ? 'other' : si}`] }),
      h('span', { class: 'legend-name' }, name),
      h('span', { class: 'muted' }, fmtY(values[si].reduce((a, b) => a + b, 0)))))
    : '');
}

// --- the table ------------------------------------------------------------------------------------

function aggregate(groups, by) {
  const map = new Map();
  for (const g of groups) {
    const name = groupName(g, by);
    const a = map.get(name) || { name, requests: 0, errors: 0, tokens_in: 0, tokens_out: 0, energy_j: null, energy_kwh: null, latency_ms_sum: 0, cost: null, currencies: new Set(), sources: new Set(), other: new Set() };
    a.requests += g.requests || 0;
    a.errors += g.errors || 0;
    a.tokens_in += g.tokens_in || 0;
    a.tokens_out += g.tokens_out || 0;
    a.latency_ms_sum += g.latency_ms_sum || 0;
    if (isNum(g.energy_kwh)) a.energy_kwh = (a.energy_kwh || 0) + g.energy_kwh;
    if (isNum(g.cost)) {
      a.cost = (a.cost || 0) + g.cost;
      a.currencies.add(g.currency || 'USD');
    }
    if (g.cost_source) a.sources.add(g.cost_source);
    a.other.add(by === 'key' ? g.model : groupName(g, 'key'));
    map.set(name, a);
  }
  return [...map.values()].sort((x, y) => y.tokens_in + y.tokens_out - (x.tokens_in + x.tokens_out) || y.requests - x.requests);
}

function drawTable(box, answer, by) {
  if (!answer) {
    fill(box, h('table', { class: 'table usage-table', tid: 'usage-table' }, h('tbody', {}, h('tr', { class: 'empty-row' }, h('td', {}, emptyState('No figures yet'))))));
    return;
  }
  const rows = aggregate(answer.usage || [], by);
  const costText = (cost, currencies) => (isNum(cost) ? (currencies.size > 1 ? `${fmtNum(cost, 4)} (mixed)` : fmtCost(cost, [...currencies][0])) : '—');
  const head = [by === 'key' ? 'Key' : 'Model', 'Requests', 'Errors', 'Tokens in', 'Tokens out', 'Latency', 'Energy', 'Cost', 'Per 1M tok', 'Priced by'];
  const cols = ['w-name', 'w-req', 'w-err', 'w-tin', 'w-tout', 'w-lat', 'w-energy', 'w-cost', 'w-mtok', 'w-src'];
  const t = answer.totals || {};
  const allCur = new Set((answer.usage || []).filter((g) => isNum(g.cost)).map((g) => g.currency || 'USD'));
  fill(box, h('table', { class: 'table usage-table', tid: 'usage-table' },
    h('colgroup', {}, cols.map((c) => h('col', { class: c }))),
    h('thead', {}, h('tr', {}, head.map((x, i) => h('th', { scope: 'col', class: i ? 'num' : '', title: i === 5 ? 'average latency' : undefined }, x)))),
    h('tbody', {}, rows.length
      ? rows.map((r) => {
        const tok = r.tokens_in + r.tokens_out;
        return h('tr', { tid: 'usage-row', 'data-group': r.name },
          h('td', { class: 'ellipsis', title: `${r.name}\n${by === 'key' ? 'models' : 'keys'}: ${[...r.other].join(', ')}` }, h('span', { class: by === 'key' ? 'mono' : '' }, r.name)),
          h('td', { class: 'num' }, fmtInt(r.requests)),
          h('td', { class: ['num', r.errors && 'err-text'] }, fmtInt(r.errors)),
          h('td', { class: 'num' }, fmtInt(r.tokens_in)),
          h('td', { class: 'num' }, fmtInt(r.tokens_out)),
          h('td', { class: 'num' }, r.requests ? fmtMs(r.latency_ms_sum / r.requests) : '—'),
          h('td', { class: 'num' }, isNum(r.energy_kwh) ? `${fmtNum(r.energy_kwh * 1000, 2)} Wh` : '—'),
          h('td', { class: 'num strong' }, costText(r.cost, r.currencies)),
          h('td', { class: 'num' }, isNum(r.cost) && tok ? costText((r.cost / tok) * 1e6, r.currencies) : '—'),
          h('td', { class: 'num muted' }, [...r.sources].map((x) => (x === 'price_table' ? 'price table' : x)).join(', ') || 'unknown'));
      })
      : h('tr', { class: 'empty-row' }, h('td', { colspan: String(head.length) }, emptyState('No requests in this period', 'Send one from the Chat page, or widen the period.')))),
    rows.length > 1 ? h('tfoot', {}, h('tr', {},
      h('td', {}, 'Total'),
      h('td', { class: 'num' }, fmtInt(t.requests)),
      h('td', { class: 'num' }, fmtInt(t.errors)),
      h('td', { class: 'num' }, fmtInt(t.tokens_in)),
      h('td', { class: 'num' }, fmtInt(t.tokens_out)),
      h('td', {}), h('td', {}),
      h('td', { class: 'num strong' }, costText(t.cost, allCur)),
      h('td', {}), h('td', {}))) : null));
}
